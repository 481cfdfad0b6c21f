"""Pure tests of core/coresets/single_process.py: CCS against a brute-force reference, layout independence, bad inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shardwalk.core.coresets import single_process as coreset
from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.errors import ConfigError, DataError


def _data(n: int = 3000, classes: int = 5, seed: int = 0, ties: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    aum = rng.normal(loc=labels, size=n)  # class-dependent, like real AUM
    if ties:
        aum = np.round(aum)  # a handful of values, thousands of exact ties
    return {"id": rng.permutation(10 * n)[:n].astype(np.int64), "aum": aum, "el2n": rng.random(n), "label": labels}


def _naive_ccs(d, keep, beta, strata, seed, class_balanced, score="aum", easiest=0.0):
    """Brute force CCS on the whole table: sort, cut (the hardest β, the easiest `easiest`), bin, allocate, take
    smallest keys."""
    ids, x, key = d["id"], d[score], hash_unit(d["id"], seed)
    hard = -x if score == "aum" else x
    n = len(ids)
    m = int(np.floor(keep * n + 1e-9))
    classes = np.unique(d["label"]) if class_balanced else np.array([0])
    group = d["label"] if class_balanced else np.zeros(n, dtype=np.int64)
    sizes = np.array([(group == c).sum() for c in classes])
    drop = np.floor(beta * sizes + 1e-9).astype(int)
    drop_easy = np.floor(easiest * sizes + 1e-9).astype(int)
    budgets_c = coreset.class_budgets(sizes, m, caps=sizes - drop - drop_easy) if class_balanced else [m]
    chosen = []
    for c, size, dr, de, mc in zip(classes, sizes, drop, drop_easy, budgets_c):
        rows = np.flatnonzero(group == c)
        order = np.lexsort((ids[rows], key[rows], hard[rows]))  # easiest first
        hardest_first = np.lexsort((ids[rows], key[rows], -hard[rows]))
        kept = np.intersect1d(rows[order[: size - dr]], rows[hardest_first[: size - de]])
        lo, hi = x[kept].min(), x[kept].max()
        width = (hi - lo) / strata
        s = np.zeros(len(kept), dtype=int) if width == 0 else np.clip(np.floor((x[kept] - lo) / width), 0, strata - 1)
        counts = np.bincount(s.astype(int), minlength=strata)
        budgets = coreset.allocate_budget(counts, mc)
        for j in range(strata):
            pool = kept[s == j]
            pool = pool[np.lexsort((ids[pool], key[pool]))]
            chosen.extend(ids[pool[: budgets[j]]].tolist())
    return np.sort(np.array(chosen, dtype=np.int64))


def _ids(table: pa.Table) -> np.ndarray:
    return table.column("id").to_numpy()


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.7])
@pytest.mark.parametrize("class_balanced", [False, True])
def test_ccs_equals_brute_force_and_is_layout_independent(keep, class_balanced):
    d = _data()
    beta = coreset.default_beta(keep)
    want = _naive_ccs(d, keep, beta, 50, 3, class_balanced)
    for shards in (1, 2, 4, 7):
        got = _ids(coreset.ccs_select(d, keep, score="aum", class_balanced=class_balanced, seed=3, shards=shards))
        np.testing.assert_array_equal(got, want)
    assert len(want) == int(keep * len(d["id"]) + 1e-9)


def test_ccs_with_massive_ties_goes_past_the_score_column():
    d = _data(n=2000, ties=True)
    want = _naive_ccs(d, 0.1, 0.3, 50, 0, False)
    for shards in (1, 3):
        np.testing.assert_array_equal(_ids(coreset.ccs_select(d, 0.1, score="aum", shards=shards)), want)


def test_beta_cutoff_drops_exactly_the_hardest():
    n = 1000
    d = {"id": np.arange(n), "el2n": np.arange(n, dtype=float)}  # el2n: high = hard
    # keep + beta = 1: nothing is left to choose, so the selection is exactly the easiest 700.
    got = _ids(coreset.ccs_select(d, 0.7, score="el2n", beta=0.3))
    np.testing.assert_array_equal(got, np.arange(700))


@pytest.mark.parametrize("class_balanced", [False, True])
def test_easiest_cut_equals_brute_force_and_is_layout_independent(class_balanced):
    d = _data()
    want = _naive_ccs(d, 0.3, 0.05, 50, 2, class_balanced, score="el2n", easiest=0.2)
    for shards in (1, 3):
        got = _ids(coreset.ccs_select(d, 0.3, score="el2n", beta=0.05, easiest=0.2, class_balanced=class_balanced,
                                      seed=2, shards=shards))
        np.testing.assert_array_equal(got, want)
    assert len(want) == 900 and not np.array_equal(want, _naive_ccs(d, 0.3, 0.05, 50, 2, class_balanced, "el2n"))


def test_easiest_and_beta_cut_both_ends():
    n = 1000
    d = {"id": np.arange(n), "el2n": np.arange(n, dtype=float)}  # el2n: high = hard
    # β + easiest + keep = 1: exactly the band between the easiest 300 and the hardest 200
    got = _ids(coreset.ccs_select(d, 0.5, score="el2n", beta=0.2, easiest=0.3))
    np.testing.assert_array_equal(got, np.arange(300, 800))
    with pytest.raises(ConfigError, match="easiest"):
        coreset.ccs_select(d, 0.5, score="el2n", beta=0.2, easiest=0.4)


def test_allocate_budget_smallest_first_and_exact():
    # 30 over 4 strata, smallest first: empty gets 0, size 1 gets 1, size 5 gets min(5, 29 // 2), the last 24
    np.testing.assert_array_equal(coreset.allocate_budget(np.array([1, 100, 5, 0]), 30), [1, 24, 5, 0])
    np.testing.assert_array_equal(coreset.allocate_budget(np.array([10, 10, 10]), 10), [3, 3, 4])
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 50, size=rng.integers(1, 60))
        m = int(rng.integers(0, sizes.sum() + 1))
        b = coreset.allocate_budget(sizes, m)
        assert b.sum() == m and (b <= sizes).all() and (b >= 0).all()


def test_strata_are_equal_width_and_include_the_max():
    # Two clusters far apart: half the budget must come from each (equal width, smallest first).
    n = 1000
    x = np.concatenate([np.linspace(-5.0, -4.9, 900), np.linspace(4.9, 5.0, 100)])
    d = {"id": np.arange(n), "aum": x}
    got = _ids(coreset.ccs_select(d, 0.2, score="aum", beta=0.0, strata=2))
    assert (got >= 900).sum() == 100 and len(got) == 200  # the small stratum is taken whole
    # negative max (AUM can be all negative): the max row must be selectable (reference code drops it)
    d2 = {"id": np.arange(4), "aum": np.array([-4.0, -3.0, -2.0, -1.0])}
    got2 = _ids(coreset.ccs_select(d2, 0.75, score="aum", beta=0.0, strata=4))
    assert len(got2) == 3


def test_all_scores_equal_gives_a_full_uniform_coreset():
    d = {"id": np.arange(500), "aum": np.zeros(500)}
    got = _ids(coreset.ccs_select(d, 0.1, score="aum", seed=5))
    assert len(got) == 50  # the reference code returns an empty coreset here
    np.testing.assert_array_equal(got, _ids(coreset.ccs_select(d, 0.1, score="aum", seed=5, shards=4)))
    assert not np.array_equal(got, _ids(coreset.ccs_select(d, 0.1, score="aum", seed=6)))


def test_class_balanced_keeps_class_proportions():
    d = _data(n=2000, classes=4)
    got = _ids(coreset.ccs_select(d, 0.1, score="aum", class_balanced=True))
    chosen_labels = d["label"][np.isin(d["id"], got)]
    sizes = np.bincount(d["label"])
    assert np.abs(np.bincount(chosen_labels, minlength=4) - 0.1 * sizes).max() < 1


def test_class_budgets_largest_remainder_and_caps():
    np.testing.assert_array_equal(coreset.class_budgets(np.array([5, 5, 5]), 7), [3, 2, 2])
    np.testing.assert_array_equal(coreset.class_budgets(np.array([10, 2]), 6, caps=np.array([10, 1])), [5, 1])
    with pytest.raises(ConfigError):
        coreset.class_budgets(np.array([2, 2]), 5)


def test_random_and_topk_exact_and_layout_independent():
    d = _data(n=1500)
    for shards in (2, 5):
        np.testing.assert_array_equal(_ids(coreset.random_select(d, 0.3, seed=1, shards=shards)), _ids(coreset.random_select(d, 0.3, seed=1)))
    top = _ids(coreset.topk_select(d, 0.1, score="el2n", hardest=True, shards=3))
    want = np.sort(d["id"][np.argsort(-d["el2n"])[:150]])
    np.testing.assert_array_equal(top, want)
    easy = _ids(coreset.topk_select(d, 0.1, score="aum", hardest=False))  # aum: high = easy
    np.testing.assert_array_equal(easy, np.sort(d["id"][np.argsort(-d["aum"])[:150]]))
    cb = _ids(coreset.topk_select(d, 0.2, score="el2n", class_balanced=True))
    assert len(cb) == 300
    rnd = _ids(coreset.random_select(d, 0.2, class_balanced=True, seed=2))
    assert len(rnd) == 300 and len(np.unique(rnd)) == 300


def test_rs2_fresh_subsets_cover_the_data():
    ids = np.arange(100) * 2
    subsets = [coreset.rs2_epoch(ids, 0.25, e, seed=1) for e in range(4)]
    assert all(len(s) == 25 for s in subsets)
    np.testing.assert_array_equal(np.sort(np.concatenate(subsets)), ids)  # one pass = every example once
    assert not np.array_equal(coreset.rs2_epoch(ids, 0.25, 4, seed=1), subsets[0])
    it = coreset.rs2_sampler(ids, 0.25, seed=1)
    np.testing.assert_array_equal(next(it), subsets[0])


def test_selection_table_schema():
    t = coreset.ccs_select(_data(n=300), 0.5, score="aum")
    assert t.schema.names == ["id", "weight"]
    assert t.column("weight").type == pa.float64() and t.column("id").type == pa.int64()
    assert set(t.column("weight").to_pylist()) == {1.0}


# ----------------------------------------------------------------------------- bad input


def test_missing_labels_for_class_balanced():
    d = {"id": np.arange(100), "aum": np.random.default_rng(0).normal(size=100)}
    with pytest.raises(DataError, match="label"):
        coreset.ccs_select(d, 0.5, score="aum", class_balanced=True)


def test_single_class_class_balanced_is_plain_ccs():
    d = _data(n=600, classes=1)
    np.testing.assert_array_equal(
        _ids(coreset.ccs_select(d, 0.3, score="aum", class_balanced=True)),
        _ids(coreset.ccs_select(d, 0.3, score="aum")),
    )


def test_nan_scores_rejected_with_row():
    d = _data(n=100)
    d["aum"][42] = np.nan
    with pytest.raises(DataError, match="row 42"):
        coreset.ccs_select(d, 0.5, score="aum", shards=3)


@pytest.mark.parametrize("keep", [0.0, 1.0, -0.1, 1.5, "0.5"])
def test_keep_outside_unit_interval(keep):
    with pytest.raises(ConfigError, match="keep"):
        coreset.ccs_select(_data(n=100), keep, score="aum")


def test_keep_too_small_for_n():
    with pytest.raises(ConfigError, match="selects no example"):
        coreset.random_select(_data(n=5), 0.1)


def test_beta_plus_keep_above_one():
    with pytest.raises(ConfigError, match="beta \\+ keep"):
        coreset.ccs_select(_data(n=100), 0.8, score="aum", beta=0.3)
    with pytest.raises(ConfigError, match="beta"):
        coreset.ccs_select(_data(n=100), 0.5, score="aum", beta=1.2)


def test_unknown_method_and_score():
    with pytest.raises(ConfigError, match="method"):
        coreset.select(_data(n=100), "kcenter", 0.5)
    with pytest.raises(ConfigError, match="unknown score"):
        coreset.ccs_select(_data(n=100), 0.5, score="grand")
    with pytest.raises(DataError, match="missing score column"):
        coreset.ccs_select(_data(n=100), 0.5, score="forgetting")


def test_duplicate_ids_rejected():
    d = _data(n=100)
    d["id"][3] = d["id"][4]
    with pytest.raises(DataError, match="duplicate"):
        coreset.ccs_select(d, 0.5, score="aum")


def test_default_beta_rule():
    assert coreset.default_beta(0.1) == 0.3 and coreset.default_beta(0.05) == 0.3
    assert coreset.default_beta(0.5) == 0.0 and coreset.default_beta(0.7) == 0.0
    assert coreset.default_beta(0.3) == pytest.approx(0.15)
