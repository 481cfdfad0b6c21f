"""Settings of a walk as frozen objects: built and validated once, passed whole (docs/design.md, SRRW).

`WalkSpec` is everything that decides a trajectory; the resume record of a checkpointed walk is derived
from it (`resume_record`), so no setting can be left out of the check that refuses to continue
checkpoints made with other settings. `WalkerLayout` says how the walk is spread over actors and
never changes the trajectory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shardwalk.core.errors import ConfigError
from shardwalk.core.plan.sizing import Node, replicate_fits
from shardwalk.core.srrw.agents import PARTITIONERS
from shardwalk.core.srrw.chain import check_chain_settings


def _is_real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v: object, low: int) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= low


@dataclass(frozen=True)
class Schedule:
    """Step sizes and safeguards of SA-SRRW: γ_n = (n+1)^(−a), β_n = lr·(n+1)^(−b)."""

    a: float = 0.8
    b: float = 0.9
    lr: float = 1.0
    project: float | None = None  # radius of the θ ball to project onto (None: no projection)
    polyak: bool = False  # also keep θ̄_n, the running average of θ_1..θ_n
    max_norm: float = 1e8  # ‖θ‖ beyond this (or non-finite) is divergence
    record_every: int = 0  # snapshot θ every this many steps into the token's curve (0: never)
    record_path: bool = False  # keep the visited agent sequence (tests; costs memory)

    def __post_init__(self) -> None:
        for name in ("a", "b"):
            v = getattr(self, name)
            if not _is_real(v) or not 0.5 < v <= 1.0:
                raise ConfigError(f"step-size exponent {name} must be in (0.5, 1], got {v!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.project is not None and (not _is_real(self.project) or self.project <= 0):
            raise ConfigError(f"project radius must be > 0 or None, got {self.project!r}")
        if not _is_real(self.max_norm) or self.max_norm <= 0:
            raise ConfigError(f"max_norm must be a finite number > 0, got {self.max_norm!r}")
        if not _is_count(self.record_every, 0):
            raise ConfigError(f"record_every must be an integer >= 0, got {self.record_every!r}")

    @property
    def regime(self) -> str:
        """Which time-scale regime of Hu et al. (2024): 'a<b' (recommended), 'a=b' or 'a>b'."""
        return "a<b" if self.a < self.b else ("a=b" if self.a == self.b else "a>b")


@dataclass(frozen=True)
class WalkSpec:
    """Everything that decides a walk's trajectory (the same in the reference and on any layout)."""

    steps: int
    alpha: float = 0.0
    base: str = "mhrw"
    tokens: int = 1
    seed: int = 0
    theta0: tuple[float, ...] | None = None  # None: θ₀ = 0
    start: int | None = None  # agent id every token starts at (None: drawn from its stream)
    schedule: Schedule = Schedule()

    def __post_init__(self) -> None:
        if not _is_count(self.steps, 1):
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not _is_count(self.tokens, 1):
            raise ConfigError(f"tokens must be an integer >= 1, got {self.tokens!r}")
        if not _is_count(self.seed, 0):
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        check_chain_settings(self.alpha, self.base)
        if self.start is not None and not _is_count(self.start, 0):
            raise ConfigError(f"start must be an agent id (an integer >= 0) or None, got {self.start!r}")
        if self.theta0 is not None:
            theta0 = np.asarray(self.theta0, dtype=np.float64)
            if theta0.ndim != 1 or not np.isfinite(theta0).all():
                raise ConfigError(f"theta0 must be a finite vector, got shape {theta0.shape}")
            object.__setattr__(self, "theta0", tuple(float(v) for v in theta0))

    @classmethod
    def build(cls, **settings: Any) -> WalkSpec:
        """From flat keyword settings (the Python API): schedule fields go to the `Schedule`."""
        sched_names = {f.name for f in dataclasses.fields(Schedule)}
        own = {f.name for f in dataclasses.fields(cls)} - {"schedule"}
        unknown = sorted(set(settings) - sched_names - own)
        if unknown:
            raise ConfigError(f"unknown walk setting(s) {unknown}; known: {sorted(own | sched_names)}")
        theta0 = settings.get("theta0")
        if theta0 is not None:
            settings = {**settings, "theta0": tuple(np.asarray(theta0, dtype=np.float64).ravel().tolist())}
        schedule = Schedule(**{k: v for k, v in settings.items() if k in sched_names})
        return cls(schedule=schedule, **{k: v for k, v in settings.items() if k in own})

    def initial_theta(self, dim: int) -> np.ndarray:
        """θ₀ as a float64 vector of the model's dimension."""
        theta0 = np.zeros(dim) if self.theta0 is None else np.asarray(self.theta0, dtype=np.float64)
        if theta0.shape != (dim,):
            raise ConfigError(f"theta0 must be a finite vector of shape ({dim},), got shape {theta0.shape}")
        return theta0


@dataclass(frozen=True)
class WalkerLayout:
    """How a walk is spread over walker actors (never changes its trajectory)."""

    partitions: int = 2
    partitioner: str = "metis"  # metis | kl | louvain | range (shardwalk.core.srrw.partition.walk_partition)
    halo: int | Literal["auto"] = "auto"  # ghost agents within this many hops of an actor's own ("auto":
    #                                       from a pilot walk's cross rate, shardwalk.core.srrw.partition.choose_halo)
    checkpoint_every: int = 0
    chunk: int = 0  # work between an actor's looks at its inbox: lock-step iterations (numpy kernel) or hops
    #                 per token (compiled kernel); 0: 1 iteration or 256 hops
    # True: every actor holds every agent and the tokens are split over actors, never handed off; "auto":
    # so whenever a full copy of the data per actor fits the nodes (`replicate_fits`), else partitioned
    replicate: bool | Literal["auto"] = "auto"
    num_cpus: float = 0
    timeout: float | None = None
    # partitioned actors hand tokens over direct links (shardwalk.workers.peer_link) rather than Ray calls
    links: bool = True

    def __post_init__(self) -> None:
        if not _is_count(self.partitions, 1):
            raise ConfigError(f"partitions must be an integer >= 1, got {self.partitions!r}")
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(f"partitioner must be one of {list(PARTITIONERS)}, got {self.partitioner!r}")
        if self.halo != "auto" and not _is_count(self.halo, 0):
            raise ConfigError(f"halo must be an integer >= 0 or 'auto', got {self.halo!r}")
        for name in ("checkpoint_every",):
            if not _is_count(getattr(self, name), 0):
                raise ConfigError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.replicate, bool) and self.replicate != "auto":
            raise ConfigError(f"replicate must be true, false or 'auto', got {self.replicate!r}")
        if not _is_count(self.chunk, 0):
            raise ConfigError(f"chunk must be an integer >= 0, got {self.chunk!r}")
        if not isinstance(self.links, bool):
            raise ConfigError(f"links must be true or false, got {self.links!r}")
        if not _is_real(self.num_cpus) or self.num_cpus < 0:
            raise ConfigError(f"num_cpus must be a number >= 0, got {self.num_cpus!r}")


    def resolved(self, data_bytes: int, nodes: Sequence[Node]) -> WalkerLayout:
        """This layout with `replicate = "auto"` decided for `data_bytes` of agent data on `nodes`."""
        if self.replicate != "auto":
            return self
        return dataclasses.replace(self, replicate=replicate_fits(data_bytes, self.partitions, nodes))


RUN_OPTIONS = ("parts", "checkpoint_dir", "resume", "dim")  # per-run inputs that are neither spec nor layout


def split_settings(settings: dict[str, Any]) -> tuple[WalkSpec, WalkerLayout, dict[str, Any]]:
    """(walk spec, layout, the rest) from the flat keyword settings of the distributed entry point."""
    layout_names = {f.name for f in dataclasses.fields(WalkerLayout)}
    layout = WalkerLayout(**{k: v for k, v in settings.items() if k in layout_names})
    rest_names = set(RUN_OPTIONS)
    rest = {k: v for k, v in settings.items() if k in rest_names}
    spec = WalkSpec.build(**{k: v for k, v in settings.items() if k not in layout_names | rest_names})
    return spec, layout, rest


def resume_record(spec: WalkSpec, **facts: Any) -> dict[str, Any]:
    """The checkpoint run record: every field of `spec` (flattened, JSON values) plus `facts` (e.g. dim)."""
    flat: dict[str, Any] = {}
    for key, value in dataclasses.asdict(spec).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return json.loads(json.dumps({**flat, **facts}))


def record_differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The settings whose value differs between a stored resume record and this run's."""
    return sorted(k for k in set(expected) | set(found) if found.get(k) != expected.get(k))
