"""shardwalk: sharded HNSW indexing, coverage-centric coreset selection and SA-SRRW token optimisation on Ray.

The public API is what `__all__` names, imported from here: `from shardwalk import ShardedIndex, ccs_select`.
Everything else (`shardwalk.core`, `shardwalk.workers`, `shardwalk.pipelines`) is internal and may move.
Names resolve on first use, so `import shardwalk` stays cheap and starts no Ray.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Ray reads this switch once, when `ray` is first imported: "0" makes the IP of a node started by this process
# 127.0.0.1, so an embedded Ray binds loopback only. Set here, before anything under shardwalk imports ray;
# shardwalk.workers.autoconnect refuses to start an embedded Ray if it did not take effect (ray imported first).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(LOOPBACK_SWITCH, "0")

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # sharded HNSW index (Ray actors; joins RAY_ADDRESS or starts Ray on first use)
    "ShardedIndex": "shardwalk.workers.sharded_index",
    # coreset selection: pure and exact for any sharding, then the same on Ray actors
    "ccs_select": "shardwalk.core.coresets.single_process",
    "random_select": "shardwalk.core.coresets.single_process",
    "topk_select": "shardwalk.core.coresets.single_process",
    "parse_method": "shardwalk.core.coresets.selection_names",
    "selection_name": "shardwalk.core.coresets.selection_names",
    "read_selection": "shardwalk.core.coresets.selection_names",
    "Split": "shardwalk.core.coresets.evaluation",
    "evaluate_selection": "shardwalk.core.coresets.evaluation",
    "ProxySpec": "shardwalk.core.coresets.proxy_spec",
    "TrainSpec": "shardwalk.core.coresets.proxy_spec",
    "read_labelled": "shardwalk.core.storage.labelled",
    "score_dataset": "shardwalk.workers.scorer",
    "select_distributed": "shardwalk.workers.selector",
    "evaluate_coreset": "shardwalk.workers.scorer",
    # SA-SRRW: the single-process reference, then the same trajectory on walker actors
    "SRRW": "shardwalk.core.srrw",
    "WalkSpec": "shardwalk.core.srrw",
    "WalkerLayout": "shardwalk.core.srrw",
    "run_sa_srrw": "shardwalk.core.srrw",
    "run_sa_srrw_batch": "shardwalk.core.srrw",
    "run_distributed_sa_srrw": "shardwalk.workers.walker",
    # reading published results: an export's current version, a verified local copy of a store output
    "export_location": "shardwalk.pipelines.export",
    "materialize": "shardwalk.core.storage.node_cache",
    # the errors a caller catches (every bad input is an InputError with a one-line message)
    "ShardwalkError": "shardwalk.core.errors",
    "InputError": "shardwalk.core.errors",
    "ConfigError": "shardwalk.core.errors",
    "DataError": "shardwalk.core.errors",
    "CorruptArtifactError": "shardwalk.core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardwalk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
