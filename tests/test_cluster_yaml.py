"""cluster.yaml is a real Ray cluster-launcher config: valid against the schema Ray ships, no credentials."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler.sdk import fillout_defaults

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _validate(config: dict[str, Any]) -> None:
    jsonschema.validate(config, SCHEMA)  # as written: catches typos before defaults are merged in
    jsonschema.validate(fillout_defaults(copy.deepcopy(config)), SCHEMA)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_rays_schema(config: dict[str, Any]) -> None:
    _validate(config)
    assert config["head_node_type"] in config["available_node_types"]
    assert len(config["available_node_types"]) >= 2


@pytest.mark.parametrize("typo", [("setup_commands", "setup_comands"), ("max_workers", "max_worker"), ("provider", "provder")])
def test_a_typod_key_fails_validation(config: dict[str, Any], typo: tuple[str, str]) -> None:
    good, bad = typo
    broken = copy.deepcopy(config)
    broken[bad] = broken.pop(good)
    with pytest.raises(jsonschema.ValidationError):
        _validate(broken)


def test_setup_installs_the_project_portably(config: dict[str, Any]) -> None:
    setup = "\n".join(config["setup_commands"])
    assert "HNSWLIB_NO_NATIVE=1" in setup and "pip install -e ~/shardwalk" in setup
    assert "torch==2.13.0" in setup


def test_no_credentials_in_cluster_yaml() -> None:
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert not re.search(r"(?i)(secret|password|token|private_key|aws_access_key_id)\s*[:=]", text)


def test_cluster_needs_no_shared_filesystem(config: dict[str, Any]) -> None:
    """Artifacts go to object storage (--runs-dir s3://...): nothing mounts EFS/NFS."""
    commands = " ".join(config.get("setup_commands", []) + config.get("head_setup_commands", [])
                        + config.get("worker_setup_commands", []) + list(config.get("file_mounts", {})))
    assert not re.search(r"efs|nfs|mount ", commands, re.I)
    assert "--runs-dir s3://BUCKET/shardwalk" in CLUSTER_YAML.read_text()
