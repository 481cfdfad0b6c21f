"""The coreset job's settings as frozen dataclasses, built and validated once from its config (docs/design.md "Validation").

`CoresetSpec.from_config` is what `pipelines/coreset.py`'s `validate` runs, and what the demo runs on
its own sections, so a bad value reads the same from either. Stages receive `dataclasses.asdict` of
the parts they need (cache keys hash plain values) and rebuild the part with the same validators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shardwalk.core import validate
from shardwalk.core.coresets.evaluation import Split
from shardwalk.core.coresets.proxy_spec import ProxySpec, TrainSpec, check_device
from shardwalk.core.coresets.scaling import check_standardize
from shardwalk.core.coresets.selection import check_beta
from shardwalk.core.coresets.selection_names import parse_method
from shardwalk.core.errors import ConfigError


@dataclass(frozen=True)
class SelectSpec:
    """Which coresets to select: every method name at every keep fraction."""

    keep: tuple[float, ...]  # fractions of the training rows each coreset keeps
    methods: tuple[str, ...]
    strata: int = 50
    seed: int = 0
    beta: str | float = "auto"  # CCS's hard-cut fraction: "auto" = chosen per rate on a validation split

    def __post_init__(self) -> None:
        check_beta(self.beta, "select.beta")
        validate.keeps("select.keep", list(self.keep))
        if not self.methods:
            raise ConfigError("select.methods must name at least one selection method")
        for name in self.methods:
            parse_method(name)
        if self.beta != "auto" and any(m["method"] == "ccs" for m in self.parsed()) and self.beta + max(self.keep) > 1:
            raise ConfigError(f"select.beta + select.keep must be <= 1 for CCS (drops the hardest beta, keeps keep), "
                              f"got {self.beta} + {max(self.keep)}")
        validate.integer("select.strata", self.strata)
        validate.integer("select.seed", self.seed, 0)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> SelectSpec:
        """The spec of a `select` section."""
        keep, methods = section["keep"], section["methods"]
        validate.keeps("select.keep", keep)
        if not isinstance(methods, list | tuple):
            raise ConfigError(f"select.methods must be a list of method names, got {methods!r}")
        return cls(tuple(float(r) for r in keep), tuple(methods), section["strata"], section["seed"],
                   section.get("beta", "auto"))

    def parsed(self) -> list[dict[str, Any]]:
        """Every method name parsed (shardwalk.core.coresets.selection_names.parse_method)."""
        return [parse_method(m) for m in self.methods]


@dataclass(frozen=True)
class CoresetSpec:
    """A validated coreset config: split, proxies, selections, evaluation (None when disabled).

    `training` is the evaluate section's model and budget whether or not the evaluate stage runs: β tuning
    fits its candidates with it.
    """

    actors: int  # scorer and selection actors (and the ingest parts, the kNN index's shards)
    split: Split
    proxy: ProxySpec
    select: SelectSpec
    evaluate: TrainSpec | None
    knn: bool
    device: str
    test_source: str
    standardize: str | bool = "auto"
    training: TrainSpec = field(default_factory=TrainSpec)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CoresetSpec:
        """Check every value and the rules between them; ConfigError naming the key."""
        actors = validate.shards(config["actors"], "actors")
        split = Split(config["test_fraction"], config["split_seed"])
        training = TrainSpec.from_config({k: v for k, v in config["evaluate"].items() if k != "enabled"})
        spec = cls(actors, split, ProxySpec.from_config(config["proxy"]), SelectSpec.from_config(config["select"]),
                   training if config["evaluate"]["enabled"] else None,
                   bool(config["knn"]["enabled"]), check_device(config.get("device", "auto")),
                   str(config.get("test_source") or ""), check_standardize(config.get("standardize", "auto")), training)
        spec._check_rules()
        return spec

    def _check_rules(self) -> None:
        if self.test_source and self.split.test_fraction > 0:
            raise ConfigError("test_source is the test split: set test_fraction = 0 with it")
        if self.split.test_fraction == 0 and not self.test_source and self.evaluate is not None:
            raise ConfigError("test_fraction = 0 leaves nothing to test on: set test_source, or evaluate.enabled = false")
        methods = self.select.parsed()
        if any(m.get("score") == "knn_density" for m in methods) and not self.knn:
            raise ConfigError("score 'knn_density' needs knn.enabled = true")
        if any(m["method"] == "d2" for m in methods) and not self.knn:
            raise ConfigError("d2 methods pass messages over the kNN graph: they need knn.enabled = true")
        if any(m["method"] == "d2" and m.get("score") == "knn_density" for m in methods):
            raise ConfigError("d2 needs a difficulty score (el2n, aum, forgetting, entropy); the graph is its own density")
        if any(m.get("score") == "knn_density" and m["class_balanced"] for m in methods):
            raise ConfigError("knn_density selections cannot be class-balanced (the kNN scores carry no labels)")
