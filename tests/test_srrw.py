"""SRRW kernel properties, the SA-SRRW recursion, token persistence and the issue's bad inputs."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from shardwalk.core.errors import ConfigError, CorruptArtifactError, DataError, DivergenceError, GraphError
from shardwalk.core.srrw import (
    CHECKPOINT,
    DONE,
    SRRW,
    Schedule,
    load_token,
    make_tokens,
    run_sa_srrw,
    run_sa_srrw_batch,
    save_token,
    walk,
)
from shardwalk.core.srrw.agents import standard_graph
from shardwalk.core.srrw.objectives import LogisticRegression, add_intercept

KARATE = standard_graph("karate")


def _objective(graph=KARATE, lam=0.1, rows=3, seed=0):
    rng = np.random.default_rng(seed)
    n = graph.number_of_nodes()
    w = rng.normal(size=4)
    blocks = {}
    for i in range(n):
        x = rng.normal(size=(rows, 4)) + (i % 3)
        blocks[i] = (add_intercept(x), (x @ w + rng.normal(size=rows) > 0).astype(np.int64))
    return LogisticRegression(blocks, lam=lam)


@pytest.mark.parametrize("base", ["mhrw", "srw"])
def test_alpha_zero_is_the_base_chain_and_rows_sum_to_one(base):
    x = np.random.default_rng(0).random(34) + 0.01
    plain = SRRW(KARATE, 0.0, base)
    np.testing.assert_allclose(plain.kernel_matrix(x), plain.base_matrix(), atol=1e-15)
    rep = SRRW(KARATE, 4.0, base)
    k = rep.kernel_matrix(x)
    np.testing.assert_allclose(k.sum(axis=1), 1.0, atol=1e-12)
    p = rep.base_matrix()
    assert ((k > 0) == (p > 0)).all()  # same support: N(i) ∪ {i} where P_ii > 0
    np.testing.assert_allclose(rep.kernel_matrix(7.5 * x), k, atol=1e-14)  # x's scale cancels


def test_kernel_matches_the_formula():
    chain = SRRW(KARATE, 2.5, "srw")
    x = np.random.default_rng(1).dirichlet(np.ones(34))
    p, mu = chain.base_matrix(), chain.mu
    w = p * (x / mu)[None, :] ** -2.5
    np.testing.assert_allclose(chain.kernel_matrix(x), w / w.sum(axis=1, keepdims=True), rtol=1e-12)


def test_stationary_distributions_and_reversibility():
    deg = np.array([d for _, d in sorted(KARATE.degree())], dtype=float)
    for base, target in [("mhrw", np.full(34, 1 / 34)), ("srw", deg / deg.sum())]:
        chain = SRRW(KARATE, 0.0, base)
        p = chain.base_matrix()
        np.testing.assert_allclose(target @ p, target, atol=1e-15)
        flow = target[:, None] * p
        np.testing.assert_allclose(flow, flow.T, atol=1e-15)  # detailed balance
        np.testing.assert_allclose(chain.mu, target)
    les = SRRW(standard_graph("les_miserables"), 0.0, "mhrw")
    np.testing.assert_allclose(np.full(77, 1 / 77) @ les.base_matrix(), 1 / 77, atol=1e-15)


def test_recursion_matches_the_dense_update():
    obj = _objective()
    res = run_sa_srrw(obj, KARATE, steps=400, alpha=3.0, a=0.7, b=0.95, lr=0.5, seed=5, record_path=True, base="srw")
    tok = res.tokens[0]
    chain = SRRW(KARATE, 3.0, "srw")
    x = np.full(34, 1 / 34)
    theta = np.zeros(obj.dim)
    for n, node in enumerate(tok.path[1:]):
        x = x + (n + 2.0) ** -0.7 * (np.eye(34)[node] - x)
        theta = theta - 0.5 * (n + 2.0) ** -0.95 * chain.grad_weight[node] * obj.grad(node, theta)
    np.testing.assert_allclose(tok.visit_measure(), x, rtol=1e-10)
    np.testing.assert_allclose(tok.theta, theta, rtol=1e-9, atol=1e-12)
    assert len(tok.path) == 401 and all(KARATE.has_edge(int(u), int(v)) or u == v for u, v in zip(tok.path, tok.path[1:]))


def test_repellence_spreads_visits_and_mhrw_samples_uniformly():
    obj = _objective(lam=1.0)
    errs = {}
    for alpha in (0.0, 10.0):
        # a = 1: x_n is the plain empirical measure of the visits
        tok = run_sa_srrw(obj, KARATE, steps=20000, alpha=alpha, a=1.0, seed=1).tokens[0]
        errs[alpha] = np.abs(tok.visit_measure() * 34 - 1).max()
    assert errs[0.0] < 0.6  # MHRW approaches uniform (slowly on karate: leaves have long self-loops)
    assert errs[10.0] < errs[0.0] / 4  # SRRW: much closer


def test_baselines_nbrw_and_iid():
    obj = _objective()
    path = run_sa_srrw(obj, KARATE, steps=2000, base="nbrw", record_path=True).tokens[0].path
    deg = dict(KARATE.degree())
    for u, v, w in zip(path, path[1:], path[2:]):
        assert KARATE.has_edge(u, v) and (w != u or deg[v] == 1)
    iid = run_sa_srrw(obj, KARATE, steps=6800, base="iid", record_path=True).tokens[0].path
    counts = np.bincount(iid, minlength=34)
    assert counts.min() > 120 and counts.max() < 290
    with pytest.raises(ConfigError, match="baseline"):
        SRRW(KARATE, 1.0, "nbrw")


def test_regimes_projection_polyak_and_tokens():
    assert [Schedule(a, b).regime for a, b in [(0.8, 0.9), (0.9, 0.9), (1.0, 0.9)]] == ["a<b", "a=b", "a>b"]
    obj = _objective()
    res = run_sa_srrw(obj, KARATE, steps=300, alpha=1.0, polyak=True, record_every=1, project=0.05, lr=5.0)
    tok = res.tokens[0]
    assert max(np.linalg.norm(t) for t in tok.curve_theta) <= 0.05 + 1e-12
    np.testing.assert_allclose(tok.theta_bar, np.mean(tok.curve_theta, axis=0), atol=1e-12)
    multi = run_sa_srrw(obj, KARATE, steps=300, alpha=1.0, tokens=3, seed=9)
    assert multi.thetas.shape == (3, obj.dim)
    np.testing.assert_allclose(multi.theta, multi.thetas.mean(axis=0))
    assert not np.allclose(multi.thetas[0], multi.thetas[1])  # independent streams


def test_checkpoint_roundtrip_continues_identically(tmp_path):
    obj = _objective()
    chain = SRRW(KARATE, 5.0, "mhrw")
    sched = Schedule(record_path=True, polyak=True, record_every=50)
    straight = make_tokens(chain, obj.dim, sched, seed=3)[0]
    assert walk(straight, chain, obj, sched, 500) == DONE
    tok = make_tokens(chain, obj.dim, sched, seed=3)[0]
    assert walk(tok, chain, obj, sched, 500, checkpoint_every=200) == CHECKPOINT and tok.n == 200
    save_token(tmp_path, tok)
    back = load_token(tmp_path, 0)
    assert walk(back, chain, obj, sched, 500, checkpoint_every=200) == CHECKPOINT
    assert walk(back, chain, obj, sched, 500) == DONE
    assert back.path == straight.path and back.curve_n == straight.curve_n
    np.testing.assert_array_equal(back.theta, straight.theta)
    np.testing.assert_array_equal(back.theta_bar, straight.theta_bar)
    assert load_token(tmp_path, 7) is None
    victim = next(tmp_path.glob("token-0-*-theta.npy"))
    victim.write_bytes(victim.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CorruptArtifactError, match="checksum"):
        load_token(tmp_path, 0)


def test_batch_matches_single_token_reference():
    obj = _objective()
    ref = run_sa_srrw(obj, KARATE, steps=1500, alpha=5.0, seed=11)
    theta, snaps = run_sa_srrw_batch(obj, KARATE, steps=1500, trials=1, alpha=5.0, seed=11, record_at=(10,))
    np.testing.assert_allclose(theta[0], ref.theta, atol=1e-12)
    many, _ = run_sa_srrw_batch(obj, KARATE, steps=200, trials=8, alpha=5.0, seed=11)
    assert many.shape == (8, obj.dim) and np.isfinite(many).all() and 10 in snaps


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("alpha", [-0.1, math.nan, math.inf])
def test_bad_alpha(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        run_sa_srrw(_objective(), KARATE, steps=10, alpha=alpha)


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.9), (0.8, 1.01), (0.0, 0.9), (0.8, math.nan)])
def test_bad_step_exponents(a, b):
    with pytest.raises(ConfigError, match="exponent"):
        run_sa_srrw(_objective(), KARATE, steps=10, a=a, b=b)


def test_disconnected_graph_rejected():
    g = nx.disjoint_union(nx.path_graph(3), nx.path_graph(2))
    with pytest.raises(GraphError, match="disconnected"):
        SRRW(g, 1.0)


def test_nan_features_rejected():
    with pytest.raises(DataError, match="NaN"):
        LogisticRegression({0: (np.array([[1.0, np.nan]]), np.array([0])), 1: (np.ones((1, 2)), np.array([1]))})


def test_unstable_step_size_diverges_cleanly():
    obj = _objective(lam=0.0)
    with pytest.raises(DivergenceError, match=r"diverged at step \d+ .*lower lr"):
        run_sa_srrw(obj, KARATE, steps=5000, lr=1e9, max_norm=1e6)
    with pytest.raises(DivergenceError, match="diverged"):
        run_sa_srrw_batch(obj, KARATE, steps=5000, trials=4, lr=1e9, max_norm=1e6)


def test_token_pickles_exactly_for_transit():
    import pickle

    obj = _objective()
    chain = SRRW(KARATE, 3.0)
    sched = Schedule(polyak=True, record_every=7, record_path=True)
    tok = make_tokens(chain, obj.dim, sched, seed=1)[0]
    walk(tok, chain, obj.relabel(chain.index), sched, 50)
    back = pickle.loads(pickle.dumps(tok))
    assert back.logy == tok.logy and back.path == tok.path and back.curve_n == tok.curve_n
    np.testing.assert_array_equal(back.theta, tok.theta)
    np.testing.assert_array_equal(back.theta_bar, tok.theta_bar)
    np.testing.assert_array_equal(np.array(back.curve_theta), np.array(tok.curve_theta))
    assert back.rng.random() == tok.rng.random()


def test_walk_partition_is_balanced_and_not_worse_than_plain():
    from shardwalk.core.srrw import walk_partition
    from shardwalk.core.srrw.agents import partition

    g = standard_graph("les_miserables")
    chain = SRRW(g, 0.0)
    p = chain.base_matrix() * chain.mu[:, None]

    def crossing(parts):
        return sum(p[u, v] for u, v in g.edges() if parts[u] != parts[v])

    best = walk_partition(chain, g, 2, seed=0, method="kl")  # exact halves (metis balances within 10 %)
    assert sorted(np.bincount(list(best.values()))) == [38, 39]
    assert crossing(best) <= crossing(partition(g, 2, seed=0))


def test_objective_must_cover_exactly_the_agents():
    obj = _objective()
    with pytest.raises(DataError, match=r"1 agent\(s\) have no data, e.g. \[33\]"):
        run_sa_srrw(obj.restrict(range(33)), KARATE, steps=10)
    extra = LogisticRegression({**obj.blocks, 99: obj.blocks[0]}, lam=0.1)
    with pytest.raises(GraphError, match=r"\[99\] hold data but have no edge"):
        run_sa_srrw(extra, KARATE, steps=10)


def test_halo_mask_adds_ghost_agents_within_h_hops():
    from shardwalk.core.srrw import halo_mask

    chain = SRRW(nx.path_graph(6), 0.0)
    own = np.array([True, True, False, False, False, False])
    assert halo_mask(chain, own, 0).tolist() == own.tolist()
    assert np.flatnonzero(halo_mask(chain, own, 1)).tolist() == [0, 1, 2]
    assert np.flatnonzero(halo_mask(chain, own, 3)).tolist() == [0, 1, 2, 3, 4]


def test_the_report_draws_tokens_crossing_actors_and_their_spread(tmp_path):
    """The srrw report's crossing section: hand-offs per 1,000 hops per token, each final θ's distance to
    the average, and the walk's crossing figures in its text (from the walk stage's outputs alone)."""
    import pyarrow as pa

    from shardwalk.pipelines.reports.stage import crossing_section

    tokens = pa.table({"token": [0, 1, 2], "steps": [1000, 1000, 1000], "handoffs": [4, 0, 10],
                       "theta": [[1.0, 0.0], [0.0, 0.0], [2.0, 3.0]]})
    metrics = {"layout": "partitioned", "handoffs": 14, "handoffs_per_1000_hops": 4.667, "bytes_per_crossing": 6761.0,
               "hops_per_actor_cpu_second": 950000.0, "cut_fraction": 0.015, "halo": 3}
    section = crossing_section(tmp_path, tokens, metrics)
    assert (tmp_path / section.figure).stat().st_size > 0
    assert "partitioned" in section.text and "crossed between walker actors 14 times" in section.text
    assert "bytes per crossing 6,761.0" in section.text and "hops per actor CPU-second 950,000.0" in section.text
    assert [row["handoffs"] for row in section.table] == [4, 0, 10]
    mean = np.array([1.0, 1.0])
    assert section.table[2]["distance_to_average"] == pytest.approx(float(np.linalg.norm([2.0, 3.0] - mean)))
    assert "no walk metrics recorded" in crossing_section(tmp_path, tokens, {}).text
