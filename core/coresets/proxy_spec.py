"""The scoring and evaluation settings and the scoring layout rule: what a driver validates and plans with,
without importing torch (2-3 s in every fresh process; only the actors that train need it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shardwalk.core import validate
from shardwalk.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
MODES = ("auto", "models", "data")
KINDS = ("mlp", "linear", "cnn")


def _from_section(cls: type, section: Mapping[str, Any], prefix: str) -> Any:
    """Build a settings dataclass from a config section, naming unknown keys with the section's prefix."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"unknown {prefix.rstrip('.') or 'setting'} key(s) {unknown}; known: {sorted(names)}")
    return cls(**dict(section), _prefix=prefix)


def _check_model(spec: Any, prefix: str) -> None:
    """The settings a proxy and an evaluation model share: kind, width, batch, seed, learning rate."""
    validate.choice(f"{prefix}model", spec.model, KINDS)
    validate.integer(f"{prefix}hidden", spec.hidden)
    validate.integer(f"{prefix}batch_size", spec.batch_size)
    validate.integer(f"{prefix}seed", spec.seed, 0)
    validate.number(f"{prefix}lr", spec.lr)


@dataclass(frozen=True)
class ProxySpec:
    """How the scoring proxies train: built and validated once from the `proxy` section, passed whole."""

    model: str = "mlp"  # mlp | linear | cnn
    hidden: int = 128
    models: int = 2
    epochs: int = 8
    batch_size: int = 256
    lr: float = 0.05
    el2n_epoch: int = 2
    seed: int = 0
    layout: str = "auto"  # auto | models | data (plan_scoring below)
    _prefix: dataclasses.InitVar[str] = ""

    def __post_init__(self, _prefix: str) -> None:
        _check_model(self, _prefix)
        for key in ("models", "epochs", "el2n_epoch"):
            validate.integer(f"{_prefix}{key}", getattr(self, key))
        validate.choice(f"{_prefix}layout", self.layout, MODES)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], prefix: str = "proxy.") -> ProxySpec:
        """The spec of a config section (errors name `proxy.<key>`)."""
        return _from_section(cls, section, prefix)


@dataclass(frozen=True)
class TrainSpec:
    """How a fresh model trains on a coreset for evaluation: the same budget for every coreset."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 0.05
    hidden: int = 128
    seed: int = 0
    model: str = "mlp"
    seeds: int = 3  # the evaluate stage trains each coreset's model with seeds seed … seed + seeds − 1
    _prefix: dataclasses.InitVar[str] = ""

    def __post_init__(self, _prefix: str) -> None:
        validate.steps(self.steps, f"{_prefix}steps")
        validate.integer(f"{_prefix}seeds", self.seeds)
        _check_model(self, _prefix)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], prefix: str = "evaluate.") -> TrainSpec:
        """The spec of a config section (errors name `evaluate.<key>`)."""
        return _from_section(cls, section, prefix)


def check_device(setting: object, *, where: str = "device") -> str:
    """The validated `device` setting (auto, cpu or cuda)."""
    if setting not in DEVICES:
        raise ConfigError(f"{where} must be one of {list(DEVICES)}, got {setting!r}")
    return str(setting)


def resolve_device(setting: str, gpus: float, *, where: str = "device") -> str:
    """The torch device for `setting` given the GPUs the cluster offers: auto picks cuda when there are any."""
    check_device(setting, where=where)
    if setting == "cuda" and gpus <= 0:
        raise ConfigError(f"{where} = 'cuda' but the cluster has no GPU; use {where} = 'auto' or 'cpu'")
    return "cuda" if setting == "cuda" or (setting == "auto" and gpus > 0) else "cpu"


@dataclass(frozen=True)
class ScoringPlan:
    """How scoring is spread: `models` (independent proxies, each actor holds all rows) or `data`
    (every actor holds a shard and the proxies train data-parallel), on `actors` actors."""

    mode: str
    actors: int
    models_of: tuple[tuple[int, ...], ...]  # per actor, the proxy indices it trains (models mode)
    reason: str


def plan_scoring(rows: int, dim: int, *, models: int, actors: int, mode: str = "auto",
                 actor_memory_bytes: float = 2e9) -> ScoringPlan:
    """Choose the layout from the data size and the actors available.

    Independent proxies need no synchronisation at all, so they win whenever the training split fits one
    actor (4 bytes per feature, twice over for the float32 copy torch trains on) and there are >= 2 proxies;
    otherwise the proxies train data-parallel, one all-reduce per minibatch. Models mode never uses more
    actors than proxies.
    """
    if mode not in MODES:
        raise ConfigError(f"scoring mode must be one of {list(MODES)}, got {mode!r}")
    if not isinstance(actors, int) or actors < 1:
        raise ConfigError(f"scoring actors must be an integer >= 1, got {actors!r}")
    need = 8.0 * rows * max(dim, 1)
    fits = need <= actor_memory_bytes
    if mode == "auto":
        mode = "models" if fits and models >= 2 and actors >= 2 else "data"
        why = (f"{need / 1e6:.0f} MB of training data {'fits' if fits else 'does not fit'} one actor "
               f"({actor_memory_bytes / 1e6:.0f} MB), {models} proxies, {actors} actors")
    else:
        why = f"mode = '{mode}' set explicitly"
    if mode == "data":
        return ScoringPlan("data", actors, (), why)
    used = min(actors, models)
    return ScoringPlan("models", used, tuple(tuple(range(a, models, used)) for a in range(used)), why)
