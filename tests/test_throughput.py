"""Pure checks of the throughput levers: scoring layout and device choice, walk partitioners, hand-off counts."""

from __future__ import annotations

import numpy as np
import pytest

from shardwalk.core.coresets import proxy
from shardwalk.core.errors import ConfigError


def test_plan_scoring_chooses_independent_proxies_when_the_data_fits():
    plan = proxy.plan_scoring(80_000, 40, models=3, actors=2, actor_memory_bytes=1e9)
    assert plan.mode == "models" and plan.actors == 2 and plan.models_of == ((0, 2), (1,))
    assert proxy.plan_scoring(80_000, 40, models=3, actors=5, actor_memory_bytes=1e9).actors == 3  # <= proxies
    assert proxy.plan_scoring(80_000, 40, models=3, actors=2, actor_memory_bytes=1e6).mode == "data"  # too big
    assert proxy.plan_scoring(80_000, 40, models=1, actors=2).mode == "data"  # one proxy: nothing to spread
    assert proxy.plan_scoring(80_000, 40, models=3, actors=1).mode == "data"
    forced = proxy.plan_scoring(10, 4, models=2, actors=2, mode="data")
    assert forced.mode == "data" and "explicitly" in forced.reason
    with pytest.raises(ConfigError, match="scoring mode"):
        proxy.plan_scoring(10, 4, models=2, actors=2, mode="both")
    with pytest.raises(ConfigError, match="actors"):
        proxy.plan_scoring(10, 4, models=2, actors=0)


def test_device_setting(monkeypatch):
    assert proxy.resolve_device("auto", 0) == "cpu" and proxy.resolve_device("cpu", 4) == "cpu"
    assert proxy.resolve_device("auto", 1) == "cuda" and proxy.resolve_device("cuda", 0.5) == "cuda"
    with pytest.raises(ConfigError, match="device = 'cuda' but the cluster has no GPU"):
        proxy.resolve_device("cuda", 0)
    with pytest.raises(ConfigError, match="device must be one of"):
        proxy.check_device("gpu")
    monkeypatch.setattr(proxy.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="sees no GPU"):
        proxy.local_device("cuda")
    monkeypatch.setattr(proxy.torch.cuda, "is_available", lambda: True)
    assert proxy.local_device("cuda").type == "cuda"  # the worker would train there (no GPU here to run it)


def test_proxies_are_the_same_whichever_subset_an_actor_trains():
    rng = np.random.default_rng(0)
    x, y, ids = rng.normal(size=(120, 6)), rng.integers(0, 3, 120), np.arange(120)
    spec = proxy.ProxySpec(models=3, epochs=2, batch_size=32, hidden=8)
    whole, _ = proxy.score_shard(x, y, ids, 3, spec, total_rows=120)
    split = [proxy.score_shard(x, y, ids, 3, spec, total_rows=120, model_indices=idx)[0] for idx in ([2], [0, 1])]
    from shardwalk.core.coresets.scores import combine_parts

    merged = {m: part for rec in split for m, part in rec.model_parts().items()}
    assert combine_parts(ids, y, merged).equals(whole.scores())


def test_training_on_read_only_arrays_warns_nothing() -> None:
    """Arrow columns and Ray's object store hand out read-only arrays; torch warned about each one a user passed."""
    import warnings

    from shardwalk.core.coresets.proxy_spec import TrainSpec

    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = proxy.fit(x, y, 2, TrainSpec(steps=5, hidden=4))
        assert 0.0 <= proxy.accuracy(model, x, y) <= 1.0


def test_cli_rejects_a_bad_device(tmp_path, capsys):
    from shardwalk.pipelines.cli import main

    assert main(["run", "coreset", "--runs-dir", str(tmp_path), "--set", 'device="gpu"']) == 2
    assert "device must be one of" in capsys.readouterr().err


def _rgg(n=300, seed=1):
    import networkx as nx

    g = nx.random_geometric_graph(n, 0.12, seed=seed)
    return g.subgraph(max(nx.connected_components(g), key=len)).copy()


@pytest.mark.parametrize("method", ["metis", "kl", "louvain", "range"])
def test_partitioners_are_balanced_and_geometric_ones_cut_less(method):
    from shardwalk.core.srrw import SRRW, walk_partition
    from shardwalk.core.srrw.agents import cut_edge_fraction

    g = _rgg()
    parts = walk_partition(SRRW(g, 0.0), g, 2, seed=0, method=method)
    sizes = np.bincount(list(parts.values()))
    assert set(parts) == set(g.nodes()) and len(sizes) == 2 and sizes.max() <= 1.1 * g.number_of_nodes() / 2 + 1
    if method != "range":
        baseline = cut_edge_fraction(g, walk_partition(SRRW(g, 0.0), g, 2, method="range"))
        assert cut_edge_fraction(g, parts) < baseline


def test_louvain_falls_back_when_it_cannot_split_and_bad_counts_are_errors():
    import networkx as nx

    from shardwalk.core.srrw.agents import louvain_partition, partition

    complete = nx.complete_graph(9)  # one community: packing cannot balance, Kernighan–Lin is used
    assert louvain_partition(complete, 3) == partition(complete, 3)
    with pytest.raises(ConfigError, match="exceeds the number of agents"):
        louvain_partition(complete, 10)
    with pytest.raises(ConfigError, match="partitioner must be one of"):
        from shardwalk.core.srrw import SRRW, walk_partition

        walk_partition(SRRW(complete, 0.0), complete, 2, method="spectral")


def test_metis_is_the_default_partitioner_seeded_and_cuts_no_more_than_kl():
    from shardwalk.core.srrw import SRRW, WalkerLayout, walk_partition
    from shardwalk.core.srrw.agents import cut_edge_fraction

    assert WalkerLayout().partitioner == "metis"
    g = _rgg(600, seed=3)
    chain = SRRW(g, 0.0)
    metis = walk_partition(chain, g, 3, seed=5)
    assert metis == walk_partition(chain, g, 3, seed=5)  # the same seed, the same parts
    sizes = np.bincount(list(metis.values()))
    assert len(sizes) == 3 and sizes.max() <= 1.1 * g.number_of_nodes() / 3 + 1
    assert cut_edge_fraction(g, metis) <= cut_edge_fraction(g, walk_partition(chain, g, 3, seed=5, method="kl"))


def test_count_handoffs_follows_the_walker_rule():
    import networkx as nx

    from shardwalk.core.srrw import SRRW, count_handoffs

    chain = SRRW(nx.path_graph(6), 0.0)
    owner = np.array([0, 0, 0, 1, 1, 1])
    path = [0, 1, 2, 3, 4, 3, 2, 1, 2, 3, 4, 5]
    assert count_handoffs(chain, path, owner, halo=0) == 3  # 2→3, 3→2, 2→3
    assert count_handoffs(chain, path, owner, halo=1) == 3  # with ghosts it moves only at 4, 1 and 4 again
    assert count_handoffs(chain, path, owner, halo=2) == 1  # actor 0 holds 0..4: only the step to 5 moves


def test_halo_auto_is_chosen_from_a_pilot_walks_cross_rate():
    """The pilot's rates fall with depth; the choice is the shallowest within 25 % of the lowest allowed."""
    from shardwalk.core.srrw import SRRW
    from shardwalk.core.srrw.partition import HALO_WITHIN, choose_halo

    g = _rgg(400, seed=2)
    chain = SRRW(g, 10.0)
    parts = _owner(chain, g)
    halo, rates = choose_halo(chain, parts, seed=1, tokens=4, steps=800)
    assert rates[0] > 0 and rates[max(rates)] <= rates[0]
    assert halo in rates and rates[halo] <= HALO_WITHIN * min(rates.values())
    assert all(rates[h] > HALO_WITHIN * min(rates.values()) for h in rates if h < halo)
    assert choose_halo(chain, parts, seed=1, tokens=4, steps=800) == (halo, rates)  # seeded


def _owner(chain, g):
    from shardwalk.core.srrw import walk_partition

    parts = walk_partition(chain, g, 2, seed=0)
    return np.asarray([parts[int(v)] for v in chain.nodes])
