"""core/coresets/sgd.py follows torch.optim.SGD and CosineAnnealingLR bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from shardwalk.core.coresets.sgd import SGD, cosine_lrs


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(5, 6, generator=gen), torch.randint(0, 3, (5,), generator=gen)) for _ in range(steps)]


@pytest.mark.parametrize("settings", [dict(momentum=0.9), dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
                                      dict(momentum=0.0)])
@pytest.mark.parametrize("schedule", [False, True])
def test_parameters_equal_torch_optim_sgd_bit_for_bit(settings: dict, schedule: bool) -> None:
    steps, lr = 25, 0.3
    theirs, ours = _model(1), _model(1)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=lr, **settings)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_theirs, T_max=steps, eta_min=lr * 1e-3) if schedule else None
    opt_ours, lrs = SGD(ours.parameters(), lr=lr, **settings), cosine_lrs(lr, lr * 1e-3, steps)
    loss = nn.CrossEntropyLoss()
    for step, (x, y) in enumerate(_batches(steps)):
        set_to_none = step % 2 == 0  # both of zero_grad's modes
        opt_theirs.zero_grad(set_to_none=set_to_none)
        loss(theirs(x), y).backward()
        opt_theirs.step()
        if sched is not None:
            sched.step()
        if schedule:
            opt_ours.lr = next(lrs)
        opt_ours.zero_grad(set_to_none=set_to_none)
        loss(ours(x), y).backward()
        opt_ours.step()
    for a, b in zip(theirs.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(theirs.parameters(), _model(1).parameters()))  # it trained


def test_cosine_lrs_equal_the_scheduler_past_t_max() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7, eta_min=1e-4)
    lrs = cosine_lrs(0.1, 1e-4, 7)
    for _ in range(30):  # past T_max, where the schedule climbs back by its other branch
        assert next(lrs) == opt.param_groups[0]["lr"]
        opt.step()
        sched.step()


def test_training_a_proxy_and_a_coreset_model_does_not_import_dynamo() -> None:
    code = ("import sys, numpy as np\n"
            "from shardwalk.core.coresets import proxy\n"
            "x = np.random.default_rng(0).normal(size=(64, 4)); y = (x[:, 0] > 0).astype(np.int64)\n"
            "proxy.score_shard(x, y, np.arange(64), 2, proxy.ProxySpec(epochs=2, hidden=4, models=1), total_rows=64)\n"
            "proxy.fit(x, y, 2, proxy.TrainSpec(steps=5, hidden=4))\n"
            "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
