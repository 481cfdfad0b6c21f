"""Pure tests of core/coresets/scores.py: each score against a hand-computed value, and the recorder against history."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shardwalk.core.coresets import scores
from shardwalk.core.errors import DataError


def test_el2n_matches_hand_value_and_averages_models():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1])
    expected = np.array([np.sqrt(0.3**2 + 0.2**2 + 0.1**2), np.sqrt(0.1**2 + 0.9**2 + 0.8**2)])
    np.testing.assert_allclose(scores.el2n(probs, labels), expected)
    other = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(scores.el2n(np.stack([probs, other]), labels), expected / 2)


def test_forgetting_counts_correct_to_wrong_and_never_learned_is_max():
    correct = np.array(
        [
            [1, 0, 0, 1],
            [0, 0, 1, 1],
            [1, 0, 0, 1],
            [0, 0, 1, 1],
        ],
        dtype=bool,
    )
    # col 0: 1→0, 1→0 = 2 events; col 1 never learned = 4 epochs; col 2: 1→0 once; col 3 none.
    np.testing.assert_array_equal(scores.forgetting(correct), [2.0, 4.0, 1.0, 0.0])


def test_aum_is_margin_averaged_over_epochs():
    logits = np.array([[[2.0, 1.0, 0.0]], [[0.0, 3.0, 1.0]]])  # one example, label 0
    np.testing.assert_allclose(scores.aum(logits, np.array([0])), [((2 - 1) + (0 - 3)) / 2])


def test_entropy_uniform_and_certain():
    np.testing.assert_allclose(scores.entropy(np.array([[0.5, 0.5], [1.0, 0.0]])), [np.log(2), 0.0])


def test_label_scores_need_labels():
    with pytest.raises(DataError, match="labels are required"):
        scores.el2n(np.full((2, 3), 1 / 3), None)
    with pytest.raises(DataError, match="outside"):
        scores.margin(np.zeros((2, 3)), np.array([0, 3]))


def test_knn_density_is_mean_distance_of_k_nearest():
    graph = pa.table(
        {
            "id": pa.array([10, 11], pa.int64()),
            "neighbors": pa.array([[11, 12], [10, 12]], pa.list_(pa.int64())),
            "distances": pa.array([[1.0, 3.0], [2.0, 2.0]], pa.list_(pa.float32())),
        }
    )
    out = scores.knn_density(graph)
    assert out.column("id").to_pylist() == [10, 11]
    np.testing.assert_allclose(out.column("knn_density").to_numpy(), [2.0, 2.0])
    np.testing.assert_allclose(scores.knn_density(graph, k=1).column("knn_density").to_numpy(), [1.0, 2.0])
    with pytest.raises(DataError, match="k=3"):
        scores.knn_density(graph, k=3)


def test_recorder_equals_history_reference_for_one_model():
    rng = np.random.default_rng(0)
    epochs, n, c = 5, 40, 4
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(epochs, n, c))
    ids = np.arange(n) + 100
    rec = scores.DynamicsRecorder(ids, labels, c, el2n_epoch=2)
    rec.start_model()
    for e in range(epochs):
        rec.record(logits[e])
    got = rec.scores()
    want = scores.scores_from_history(ids, labels, logits, el2n_epoch=2)
    for name in scores.DYNAMICS_SCORES:
        np.testing.assert_allclose(got.column(name).to_numpy(), want.column(name).to_numpy(), err_msg=name)
    assert got.column("id").to_pylist() == ids.tolist()


def test_recorder_averages_over_models():
    rng = np.random.default_rng(1)
    n, c = 10, 3
    labels = rng.integers(0, c, n)
    hist = [rng.normal(size=(3, n, c)) for _ in range(2)]
    rec = scores.DynamicsRecorder(np.arange(n), labels, c, el2n_epoch=1)
    for h in hist:
        rec.start_model()
        for e in range(3):
            rec.record(h[e])
    got = rec.scores()
    refs = [scores.scores_from_history(np.arange(n), labels, h, el2n_epoch=1) for h in hist]
    for name in ("el2n", "forgetting", "entropy"):
        want = np.mean([r.column(name).to_numpy() for r in refs], axis=0)
        np.testing.assert_allclose(got.column(name).to_numpy(), want, err_msg=name)
    np.testing.assert_allclose(got.column("aum").to_numpy(), scores.aum(np.concatenate(hist), labels))


def test_recorder_rejects_non_finite_logits():
    rec = scores.DynamicsRecorder(np.arange(2), np.array([0, 1]), 2)
    rec.start_model()
    with pytest.raises(DataError, match="row 1"):
        rec.record(np.array([[0.0, 1.0], [np.nan, 0.0]]))
