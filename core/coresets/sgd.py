"""torch's SGD update and cosine schedule without `torch.optim.SGD` and `CosineAnnealingLR` objects.

`torch.optim.Optimizer.add_param_group` (called by every optimizer's constructor) is wrapped in
`torch._disable_dynamo`, which imports all of `torch._dynamo` (sympy included) on its first call: ~1.2 CPU-s in
every scorer actor and evaluation worker, more than most of their training. `torch.optim.sgd.sgd` is the same
update function the class calls, so the parameters follow the class's trajectory bit for bit
(tests/test_sgd.py compares them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch.optim.sgd import sgd


class SGD:
    """`torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)`'s `step` and `zero_grad`, and nothing else."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self._momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.requires_grad_(False)
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        buffers = [self._momentum_buffers[i] for i in live]
        sgd([self.params[i] for i in live], [self.params[i].grad for i in live], buffers,
            weight_decay=self.weight_decay, momentum=self.momentum, lr=self.lr, dampening=0.0,
            nesterov=self.nesterov, maximize=False)
        for i, buffer in zip(live, buffers):  # sgd() fills the list's first-step buffers in place
            self._momentum_buffers[i] = buffer


def cosine_lrs(base_lr: float, eta_min: float, t_max: int) -> Iterator[float]:
    """The learning rate of each step under `CosineAnnealingLR(T_max=t_max, eta_min=eta_min)`, endlessly.

    Its recursive form, operation for operation (torch 2.13 `CosineAnnealingLR.get_lr`), not the closed form,
    which differs in the last bits.
    """
    lr, epoch = base_lr, 0
    while True:
        yield lr
        epoch += 1
        if (epoch - 1 - t_max) % (2 * t_max) == 0:
            lr = lr + (base_lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        else:
            lr = ((1 + math.cos(math.pi * epoch / t_max)) / (1 + math.cos(math.pi * (epoch - 1) / t_max))
                  * (lr - eta_min) + eta_min)
