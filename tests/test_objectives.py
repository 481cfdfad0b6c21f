"""Closed-form gradients against torch autograd; θ* is a true stationary point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.srrw.objectives import (
    LogisticRegression,
    SoftmaxRegression,
    TorchObjective,
    add_intercept,
)


def _blocks(n_agents=5, rows=4, d=3, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    return {i: (rng.normal(size=(rows + i % 2, d)), rng.integers(0, classes, size=rows + i % 2)) for i in range(n_agents)}


def _torch_loss_logistic(x, y, theta, lam):
    z = torch.from_numpy(x) @ theta
    return (torch.nn.functional.softplus(z) - torch.from_numpy(y).double() * z).mean() + 0.5 * lam * theta @ theta


def test_logistic_gradient_matches_autograd():
    blocks = _blocks()
    obj = LogisticRegression(blocks, lam=0.3)
    theta = np.random.default_rng(1).normal(size=3)
    for node, (x, y) in blocks.items():
        t = torch.tensor(theta, requires_grad=True)
        _torch_loss_logistic(x, y, t, 0.3).backward()
        np.testing.assert_allclose(obj.grad(node, theta), t.grad.numpy(), rtol=1e-12, atol=1e-14)
        fused = theta.copy()
        obj.descend(node, fused, 0.25)
        np.testing.assert_allclose(fused, theta - 0.25 * t.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_softmax_gradient_matches_autograd():
    blocks = _blocks(classes=4)
    obj = SoftmaxRegression(blocks, lam=0.1, classes=4)
    theta = np.random.default_rng(2).normal(size=obj.dim)
    for node, (x, y) in blocks.items():
        t = torch.tensor(theta, requires_grad=True)
        logits = torch.from_numpy(x) @ t.reshape(4, 3).T
        (torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)) + 0.05 * t @ t).backward()
        np.testing.assert_allclose(obj.grad(node, theta), t.grad.numpy(), rtol=1e-11, atol=1e-13)


def test_hessian_matches_autograd_and_newton_solves():
    blocks = _blocks(classes=3)
    obj = SoftmaxRegression(blocks, lam=0.2)
    theta = np.random.default_rng(3).normal(size=obj.dim)
    num = np.stack([(obj.full_grad(theta + e) - obj.full_grad(theta - e)) / 2e-6 for e in np.eye(obj.dim) * 1e-6])
    np.testing.assert_allclose(obj.hessian(theta), num, atol=1e-6)
    star = obj.solve()
    assert np.linalg.norm(obj.full_grad(star)) < 1e-11
    logi = LogisticRegression({k: (add_intercept(x), y % 2) for k, (x, y) in blocks.items()}, lam=0.01)
    assert np.linalg.norm(logi.full_grad(logi.solve())) < 1e-11


def test_torch_module_objective_matches_builtin():
    blocks = _blocks()
    module = torch.nn.Linear(3, 2, bias=False)
    obj = TorchObjective(module, torch.nn.functional.cross_entropy, blocks, lam=0.1)
    soft = SoftmaxRegression(blocks, lam=0.1, classes=2)
    theta = np.random.default_rng(4).normal(size=obj.dim)
    for node in blocks:
        np.testing.assert_allclose(obj.grad(node, theta), soft.grad(node, theta), rtol=1e-10, atol=1e-12)
    part = obj.restrict([0, 2])
    assert part.nodes == [0, 2] and part.grad(2, theta).shape == (obj.dim,)
    assert 0.0 <= obj.accuracy(obj.solve()) <= 1.0


def test_bad_inputs():
    with pytest.raises(DataError, match="NaN"):
        LogisticRegression({0: (np.array([[np.nan, 1.0]]), np.array([1]))})
    with pytest.raises(DataError, match="no data"):
        LogisticRegression({0: (np.zeros((0, 2)), np.zeros(0))})
    with pytest.raises(DataError, match="outside"):
        LogisticRegression({0: (np.ones((1, 2)), np.array([2]))})
    with pytest.raises(ConfigError, match="lam"):
        LogisticRegression({0: (np.ones((1, 2)), np.array([1]))}, lam=-1)


@pytest.mark.parametrize("classes", [2, 3])
def test_stacked_loss_gradient_hessian_equal_the_agents_average(classes):
    """f over every agent's stacked rows (one weighted sum) equals the average of the agents' mean losses."""
    blocks = _blocks(n_agents=7, rows=3, d=4, classes=classes, seed=5)
    obj = (LogisticRegression if classes == 2 else SoftmaxRegression)(blocks, lam=0.2)
    theta = np.random.default_rng(6).normal(size=obj.dim)
    n = len(blocks)
    loss = sum(obj._loss_block(x, y, theta) for x, y in blocks.values()) / n + 0.1 * theta @ theta
    grad = sum(obj.grad(k, theta) for k in blocks) / n
    hess = sum(obj._weighted_hess(x, y, np.full(len(y), 1 / len(y)), theta) for x, y in blocks.values()) / n
    np.testing.assert_allclose(obj.loss(theta), loss, rtol=1e-13)
    np.testing.assert_allclose(obj.full_grad(theta), grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(obj.hessian(theta), hess + 0.2 * np.eye(obj.dim), rtol=1e-12, atol=1e-14)
    right = sum(int((obj.predict(x, theta) == y).sum()) for x, y in blocks.values())
    assert obj.accuracy(theta) == right / sum(len(y) for _, y in blocks.values())
    part = obj.restrict([1, 4])  # a restricted copy stacks its own agents only
    assert part.loss(theta) == pytest.approx((obj._loss_block(*blocks[1], theta) + obj._loss_block(*blocks[4], theta)) / 2
                                             + 0.1 * theta @ theta, rel=1e-13)
