"""The kNN graph without an index (core/index/knn_partition.py): exact where it claims to be, recall where not."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.core.index import graph_settings, hnsw
from shardwalk.core.index import knn_partition as kp


def _clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 100), dim)).astype(np.float32)
    return (centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def _brute(ids: np.ndarray, x: np.ndarray, k: int, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    """Exact graph by the slow obvious route: every pair's exact distance, sorted by (distance, id)."""
    xp = hnsw.prepare(x, space)
    if space == "l2":
        d = np.array([[np.float32(((xp[j] - xp[i]) ** 2).sum()) for j in range(len(x))] for i in range(len(x))])
    else:
        d = 1.0 - xp @ xp.T
    np.fill_diagonal(d, np.inf)
    idm = np.broadcast_to(ids, d.shape)
    return kp.sort_rows(idm.copy(), d.astype(np.float32), k)


def test_local_graph_equals_brute_force_for_any_block_size() -> None:
    x = _clustered(300)
    ids = np.arange(1000, 1300)[::-1].copy()  # ids not in row order
    truth_i, truth_d = _brute(ids, x, 7)
    for block in (1, 17, 300, 4096):
        got_i, got_d = kp.local_graph(ids, x, 7, block=block)
        np.testing.assert_array_equal(got_i, truth_i)
        np.testing.assert_allclose(got_d, truth_d, rtol=1e-5, atol=1e-5)


def test_duplicate_vectors_break_ties_by_id_and_never_list_self() -> None:
    x = _clustered(200)
    x[50:55] = x[10]  # six copies of one vector
    ids = np.arange(200)[::-1].copy()
    got_i, got_d = kp.local_graph(ids, x, 6)
    copies = ids[[10, 50, 51, 52, 53, 54]]
    row = got_i[10]
    assert row[0] != ids[10] and ids[10] not in row
    np.testing.assert_array_equal(row[:5], np.sort(copies[copies != ids[10]]))  # all at distance 0, by id
    assert (got_d[10][:5] == 0).all()


def test_exact_method_equals_brute_force_and_any_partition_count_of_one_is_the_same() -> None:
    x = _clustered(400)
    ids = np.random.default_rng(3).permutation(400) * 3
    truth_i, _ = _brute(ids, x, 5)
    got_i, _, info = kp.build_graph(ids, x, 5, kp.GraphSettings(method="exact"))
    assert info["partitions"] == 1
    np.testing.assert_array_equal(got_i, truth_i)
    big, _, _ = kp.build_graph(ids, x, 5, kp.GraphSettings(partition_rows=4096))  # one partition holds all
    np.testing.assert_array_equal(big, truth_i)


@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_partition_method_reaches_recall_and_is_deterministic(space: str) -> None:
    x = _clustered(3000, dim=24)
    ids = np.arange(3000)
    truth, _ = _brute(ids, x, 10, space) if space == "cosine" else kp.local_graph(ids, x, 10)
    settings = kp.GraphSettings(partition_rows=512, overlap=2, refine_rounds=1)
    got, dists, info = kp.build_graph(ids, x, 10, settings, space)
    assert info["partitions"] > 4
    assert hnsw.recall_at_k(got, truth) >= 0.95
    assert (np.diff(dists, axis=1) >= 0).all() and not (got == ids[:, None]).any()
    again, _, _ = kp.build_graph(ids, x, 10, settings, space)
    np.testing.assert_array_equal(got, again)


def test_refinement_raises_recall_of_a_poor_partition_graph() -> None:
    x = _clustered(3000, dim=24)
    ids = np.arange(3000)
    truth, _ = kp.local_graph(ids, x, 10)
    base = kp.GraphSettings(partition_rows=64, overlap=2, refine_rounds=0)
    poor = hnsw.recall_at_k(kp.build_graph(ids, x, 10, base)[0], truth)
    better = hnsw.recall_at_k(kp.build_graph(ids, x, 10, kp.GraphSettings(partition_rows=64, overlap=2, refine_rounds=2))[0], truth)
    assert poor < 0.96 and better > poor + 0.03


def test_merge_pieces_takes_the_union_without_duplicates() -> None:
    home = np.array([1, 2, 3])
    a = (np.array([3, 1]), np.array([[7, 8], [9, -1]]), np.array([[0.5, 0.7], [0.1, np.inf]], np.float32))
    b = (np.array([3]), np.array([[8, 6]]), np.array([[0.7, 0.2]], np.float32))
    nb, d = kp.merge_pieces(home, [a, b], 3)
    np.testing.assert_array_equal(nb, [[9, -1, -1], [-1, -1, -1], [6, 7, 8]])
    np.testing.assert_allclose(d[2], [0.2, 0.5, 0.7])


@pytest.mark.parametrize("k, rows", [(0, 10), (-1, 10), (10, 10), (11, 10)])
def test_k_outside_one_to_rows_minus_one_is_refused(k: int, rows: int) -> None:
    with pytest.raises(ConfigError, match="^k"):
        kp.check_k(k, rows)


@pytest.mark.parametrize("value, key", [({"method": "magic"}, "knn_graph.method"), ({"overlap": 0}, "knn_graph.overlap"),
                                        ({"nope": 1}, "knn_graph"), ("yes", "knn_graph")])
def test_bad_graph_settings_name_the_key(value: object, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        kp.GraphSettings.from_config(value)


def test_a_bool_switches_the_graph_with_default_settings() -> None:
    assert kp.GraphSettings.from_config(False) == kp.GraphSettings(enabled=False)
    assert kp.GraphSettings.from_config({"method": "partition"}).method == "partition"


def test_knn_graph_false_still_switches_the_graph_table_off() -> None:
    from shardwalk.pipelines import index as index_pipeline
    from shardwalk.pipelines.config import load_config

    config = load_config(index_pipeline, None, ["knn_graph=false"])
    assert config["knn_graph"]["enabled"] is False
    off_keys = index_pipeline.build(config).keys()
    assert "knn_graph" not in off_keys
    on = load_config(index_pipeline, None, ["knn_graph.overlap=3"])
    on_keys = index_pipeline.build(on).keys()
    assert on["knn_graph"]["overlap"] == 3 and "knn_graph" in on_keys


def test_graph_settings_are_part_of_the_cache_key() -> None:
    from shardwalk.pipelines import index as index_pipeline
    from shardwalk.pipelines.config import load_config

    def key(*sets: str) -> dict:
        config = load_config(index_pipeline, None, list(sets))
        return index_pipeline.build(config).keys()

    base = key("knn_graph.method=partition")
    assert key("knn_graph.method=partition", "knn_graph.overlap=3")["knn_graph"] != base["knn_graph"]
    assert key("knn_graph.method=partition", "knn_graph.overlap=3")["build"] == base["build"]
    assert "build" not in key("hnsw=false")


def test_second_choice_cells_are_balanced_too() -> None:
    x = _clustered(4000, dim=12)
    router = kp.train_partitions(x, 20, "l2", overlap=2)
    sizes = np.bincount(kp.assign(router, x, 2).ravel(), minlength=20)
    assert sizes.max() <= 1.5 * sizes.mean()  # BALANCE (1.3) on the sample, some slack on the full data
    plain = hnsw.train_router(x, 20, "l2", iters=10)
    assert np.bincount(plain.probe(x, 2).ravel(), minlength=20).max() > sizes.max()  # what the first-choice offsets leave


def test_k_means_sample_is_sized_per_cell_and_offsets_fitted_on_a_subsample_still_balance() -> None:
    assert kp.sample_rows(1_000_000, 1303) == graph_settings.SAMPLE_ROWS_PER_CELL * 1303  # not 64 per cell: training ~ rows x cells
    assert kp.sample_rows(100_000, 130) == graph_settings.SAMPLE_MIN_ROWS
    x = _clustered(9000, dim=8)  # 9,000 > max(32 x 40, 4,096): the offsets see a seeded subsample only
    router = kp.train_partitions(x, 40, "l2", seed=3, overlap=2)
    sizes = np.bincount(kp.assign(router, x, 2).ravel(), minlength=40)
    assert sizes.max() <= 1.6 * sizes.mean()  # BALANCE (1.3) on the subsample, sampling noise on the full data
    again = kp.train_partitions(x, 40, "l2", seed=3, overlap=2)
    assert np.array_equal(router.centroids, again.centroids) and np.array_equal(router.offsets, again.offsets)


def test_k_means_over_slices_matches_one_slice_and_restarts_emptied_cells() -> None:
    x = _clustered(6000, dim=8)
    centroids, spares = kp.seed_centroids(x, 30, seed=2)
    fit = np.random.default_rng(5).random(len(x)) < 0.5

    def router(cuts: list[int]) -> hnsw.Router:
        slices = [kp.TrainingSlice(x[a:b], fit[a:b], threads=2) for a, b in zip([0, *cuts], [*cuts, len(x)])]
        def ask(step: str, *args: object) -> list[object]:
            assert step in kp.TRAINING_STEPS  # what the actors accept (workers/knn_partition.py GraphActor.kmeans)
            return [getattr(s, step)(*args) for s in slices]

        return kp.fit_router(centroids.copy(), spares, "l2", 2, ask)

    one, three = router([]), router([1000, 4500])  # as on 1 actor, and on 3 holding unequal shares
    np.testing.assert_allclose(three.centroids, one.centroids, rtol=0, atol=1e-5)
    np.testing.assert_allclose(three.offsets, one.offsets, rtol=0, atol=1e-4)
    sizes = np.bincount(kp.assign(one, x, 2).ravel(), minlength=30)
    assert sizes.max() <= 1.6 * sizes.mean()
    far = np.full((1, 8), 1e6, np.float32)  # a centre no row is nearest to: it restarts on the first spare row
    moved, shift = kp.lloyd_combine(np.vstack([centroids, far]), [kp.lloyd_partial(x, np.vstack([centroids, far]))], spares)
    np.testing.assert_array_equal(moved[-1], spares[0])
    assert shift > 1e5


def test_partitions_built_side_by_side_on_threads_give_the_same_graph_as_one_thread() -> None:
    x = _clustered(2000, dim=12)
    ids = np.arange(2000) * 5
    router = kp.train_partitions(x, 8, "l2")
    member = kp.assign(router, x, 2)
    one = kp.local_candidates(ids, x, member, range(8), 6, threads=1)
    two = kp.local_candidates(ids, x, member, range(8), 6, threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    mine = np.where(member == 3, 3, -1)  # an actor owning only partition 3: its other rows stay padding
    got, _ = kp.local_candidates(ids, x, mine, [3], 6, threads=2)
    inside = (member == 3).any(axis=1)
    assert (got[~inside] == hnsw.PAD_ID).all() and (got[inside] >= 0).all()


def test_a_refinement_round_that_would_change_little_is_not_run() -> None:
    x = _clustered(3000, dim=24)
    ids = np.arange(3000)
    settings = kp.GraphSettings(partition_rows=64, overlap=2, refine_rounds=0)
    nb, d, _ = kp.build_graph(ids, x, 10, settings)
    rows = np.arange(3000)
    kept, _, rates = kp.refine(x, nb, d, 2, min_update_rate=1.0, rows=rows)  # probe: no round pays that much
    np.testing.assert_array_equal(kept, nb)
    assert len(rates) == 1 and 0 < rates[0] < 1.0
    refined, _, rates = kp.refine(x, nb, d, 2, min_update_rate=0.0, rows=rows)
    assert len(rates) == 2 and (refined != nb).any()


def test_row_groups_are_dealt_to_actors_by_rows_each_share_in_source_order() -> None:
    from shardwalk.core.storage.sources import ShardSpec
    from shardwalk.workers.knn_partition import spread_specs

    sizes = [65536, 34464, 65536, 34464, 65536]
    bounds = np.cumsum([0, *sizes])
    specs = [ShardSpec(i, int(a), int(b)) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    shares = spread_specs(specs, 2)
    assert sorted(s.index for share in shares for s in share) == list(range(5))
    assert [sum(s.num_rows for s in share) for share in shares] == [131072, 134464]
    assert all([s.start for s in share] == sorted(s.start for s in share) for share in shares)
    assert spread_specs(specs[:1], 3)[1:] == [[], []]  # more actors than row groups: some read nothing


@pytest.mark.parametrize(("method", "partition_kernels"), [("exact", False), ("partition", True)])
def test_warm_up_loads_only_the_kernels_its_method_runs(method: str, partition_kernels: bool) -> None:
    """An `exact` graph's actors compile (on a fresh install) or load no partition kernels while they read."""
    import subprocess
    import sys

    code = ("from shardwalk.core.index import knn_partition as kp\n"
            f"kp.warm_kernels(1, {method!r})\n"
            "print(len(kp._select_block.signatures), len(kp._top_cells.signatures), len(kp._refine_round.signatures))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    local, assign, refine = map(int, done.stdout.split())  # kernels with a loaded (or compiled) signature
    assert local > 0 and (assign > 0) == partition_kernels and (refine > 0) == partition_kernels


def test_in_id_order_equals_concatenate_then_sort() -> None:
    rng = np.random.default_rng(0)
    ids = rng.permutation(50)
    pieces = [(ids[a:b], rng.standard_normal((b - a, 3)).astype(np.float32), np.arange(a, b)) for a, b in ((0, 10), (10, 30), (30, 50))]
    for many in (pieces, pieces[1:2]):
        want = [np.concatenate([p[f] for p in many])[np.argsort(np.concatenate([p[0] for p in many]), kind="stable")]
                for f in range(3)]
        for got, expected in zip(kp.in_id_order(many), want):
            np.testing.assert_array_equal(got, expected)
    assert kp.in_id_order(pieces)[0].tolist() == sorted(ids.tolist())
