"""Proxy models for scoring, and the small fixed-budget trainer used to evaluate coresets (pure torch).

Data-parallel training is layout-independent by construction: an example's minibatch in epoch e is
`⌊hash_unit(id, seed, e) · batches⌋`, so the global batch is the same set of examples whatever the
sharding; each shard sums its per-example loss gradients, `allreduce` sums them (and the example
count) over shards, and every shard divides by the global count. With one shard `allreduce` is a
no-op, so 1 and k shards follow the same trajectory up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from shardwalk.core.coresets.proxy_spec import (  # noqa: F401  (the settings live torch-free; re-exported for `proxy.X` callers)
    DEVICES,
    KINDS,
    MODES,
    ProxySpec,
    ScoringPlan,
    TrainSpec,
    check_device,
    plan_scoring,
    resolve_device,
)
from shardwalk.core.coresets.scores import DynamicsRecorder
from shardwalk.core.coresets.sgd import SGD, cosine_lrs
from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.errors import ConfigError, DivergenceError

AllReduce = Callable[[torch.Tensor], None]  # in-place sum over shards


def local_device(device: str) -> torch.device:
    """The torch device inside a worker; a cuda actor landing without a visible GPU is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but this worker sees no GPU (CUDA_VISIBLE_DEVICES / num_gpus)")
    return torch.device(device)


def make_model(kind: str, dim: int, num_classes: int, *, hidden: int = 128, seed: int = 0) -> nn.Module:
    """A seeded proxy: 'mlp' (flat vectors), 'linear', or 'cnn' (28×28 images, dim 784)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "mlp":
            return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        if kind == "linear":
            return nn.Sequential(nn.Linear(dim, num_classes))
        if kind == "cnn":
            if dim != 784:
                raise ConfigError(f"proxy 'cnn' needs 28x28 inputs (dim 784), got dim {dim}")
            return nn.Sequential(
                nn.Unflatten(1, (1, 28, 28)),
                nn.Conv2d(1, 16, 5, stride=2),
                nn.ReLU(),
                nn.Conv2d(16, 32, 5, stride=2),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(32 * 4 * 4, num_classes),
            )
        raise ConfigError(f"unknown proxy model '{kind}'; choose from ['mlp', 'linear', 'cnn']")
    finally:
        torch.random.set_rng_state(gen_state)


def batch_of(ids: np.ndarray, epoch: int, batches: int, seed: int) -> np.ndarray:
    """Each example's minibatch index in `epoch`: a seeded hash, identical on any shard."""
    u = hash_unit(ids, seed * 100_003 + epoch + 1)
    return np.minimum((u * batches).astype(np.int64), batches - 1)


def _sync_grads(model: nn.Module, count: float, loss: float, allreduce: AllReduce | None) -> tuple[float, float]:
    """Sum gradients, example count and loss over shards in one call; divide grads by the global count."""
    params = list(model.parameters())
    extra = torch.tensor([count, loss], dtype=torch.float32, device=params[0].grad.device)
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [extra])
    if allreduce is not None:
        allreduce(flat)
    total, total_loss = float(flat[-2]), float(flat[-1])
    if total > 0:
        flat = flat[:-2] / total
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n
    return total, total_loss


def train_epoch(
    model: nn.Module,
    opt: SGD,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: np.ndarray,
    *,
    epoch: int,
    batches: int,
    seed: int,
    allreduce: AllReduce | None = None,
) -> float:
    """One data-parallel epoch over this shard's rows; returns the global mean loss."""
    model.train()
    assign = batch_of(ids, epoch, batches, seed)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(batches + 1))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, total_n = 0.0, 0.0
    for b in range(batches):
        rows = torch.from_numpy(order[bounds[b] : bounds[b + 1]]).to(x.device)
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x[rows]), y[rows]) if len(rows) else sum((p * 0).sum() for p in model.parameters())
        loss.backward()
        n, batch_loss = _sync_grads(model, float(len(rows)), float(loss.detach()), allreduce)
        if n > 0:
            opt.step()
        total_loss += batch_loss
        total_n += n
    mean = total_loss / max(total_n, 1.0)
    if not np.isfinite(mean):
        raise DivergenceError(f"proxy training diverged at epoch {epoch} (loss {mean})")
    return mean


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Logits (n, C) in eval mode, chunked to bound memory."""
    model.eval()
    return np.concatenate([model(x[i : i + chunk]).cpu().numpy() for i in range(0, len(x), chunk)]).astype(np.float64)


def score_shard(
    x: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray,
    num_classes: int,
    spec: ProxySpec,
    *,
    total_rows: int,
    allreduce: AllReduce | None = None,
    model_indices: Sequence[int] | None = None,
    device: str = "cpu",
) -> tuple[DynamicsRecorder, nn.Module]:
    """Train proxies `model_indices` (default: all `spec.models`), recording this shard's dynamics every epoch.

    Proxy m is seeded by (seed, m) alone, so it is the same model whichever actor trains it. Returns the
    recorder and the last proxy (whose parameters are identical on every shard of a data-parallel run).
    """
    dev = local_device(device)
    xt = _tensor(x, np.float32).to(dev)
    yt = _tensor(y, np.int64).to(dev)
    recorder = DynamicsRecorder(ids, y, num_classes, el2n_epoch=spec.el2n_epoch)
    batches = max(1, int(np.ceil(total_rows / spec.batch_size)))
    for m in range(spec.models) if model_indices is None else model_indices:
        model_seed = spec.seed * 1009 + m
        model = make_model(spec.model, x.shape[1], num_classes, hidden=spec.hidden, seed=model_seed).to(dev)
        opt = SGD(model.parameters(), lr=spec.lr, momentum=0.9)
        recorder.start_model(m)
        for epoch in range(spec.epochs):
            train_epoch(model, opt, xt, yt, ids, epoch=epoch, batches=batches, seed=model_seed, allreduce=allreduce)
            recorder.record(logits_of(model, xt))
    return recorder, model.cpu()


def fit(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    spec: TrainSpec,
    *,
    sampler: Callable[[int], np.ndarray] | None = None,
    device: str = "cpu",
) -> nn.Module:
    """Train a fresh model for exactly `steps` minibatch steps (the same budget for every coreset).

    Batches are drawn by reshuffling the given rows every pass; `sampler(pass_index)` may instead
    return the row indices of each pass (RS2 uses this). SGD with momentum and a cosine schedule.
    """
    if len(x) == 0:
        raise ConfigError("cannot train on an empty coreset")
    dev = local_device(device)
    steps, batch_size, lr = spec.steps, spec.batch_size, spec.lr
    model = make_model(spec.model, x.shape[1], num_classes, hidden=spec.hidden, seed=spec.seed).to(dev)
    opt = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    lrs = cosine_lrs(lr, lr * 1e-3, steps)
    xt = _tensor(x, np.float32).to(dev)
    yt = _tensor(y, np.int64).to(dev)
    rng = np.random.default_rng(spec.seed)
    loss_fn = nn.CrossEntropyLoss()
    step, pass_index = 0, 0
    model.train()
    while step < steps:
        rows = sampler(pass_index) if sampler is not None else rng.permutation(len(x))
        pass_index += 1
        for i in range(0, len(rows), batch_size):
            if step >= steps:
                break
            idx = torch.from_numpy(np.asarray(rows[i : i + batch_size])).to(dev)
            opt.lr = next(lrs)
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
            step += 1
    return model.cpu()


def _tensor(a: np.ndarray, dtype: type) -> torch.Tensor:
    """A tensor sharing a C-contiguous, writable copy only when needed: Arrow and Ray hand out read-only arrays,
    which torch.from_numpy accepts with a warning a user cannot act on."""
    return torch.from_numpy(np.require(a, dtype, ["C_CONTIGUOUS", "WRITEABLE"]))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `model` (on the CPU) on (x, y)."""
    pred = logits_of(model.cpu(), _tensor(x, np.float32)).argmax(axis=1)
    return float((pred == np.asarray(y)).mean())
