"""Tests of the linear benchmark baselines (benchmarks/baselines.py) on data with a known shared factor."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from baselines import cca_predict, fit_mofa, ridge_predict

from spvi.metrics import label_auc, r2_per_feature

pytest.importorskip("mofapy2")


@pytest.fixture(scope="module")
def linear_data():
    """Two views driven by two shared factors (the first separates two classes) plus noise; 200 train, 100 test.

    The noise-free R² of either view given the shared factors is about 0.8: the best possible cross-modal R².
    """
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 2, n)
    z = rng.normal(size=(n, 2))
    z[:, 0] += 2.0 * labels - 1.0
    a = z @ rng.normal(size=(2, 30)) + 0.6 * rng.normal(size=(n, 30)) - 1.0
    b = z @ rng.normal(size=(2, 20)) + 0.6 * rng.normal(size=(n, 20)) + 3.0
    return a, b, labels


@pytest.fixture(scope="module")
def mofa_fit(linear_data):
    a, b, _ = linear_data
    b_train = b[:200].copy()
    b_train[:40] = np.nan  # 40 training samples lack view b entirely
    b_train[50:60, :5] = np.nan  # and a few single values are missing
    return fit_mofa([a[:200], b_train], n_factors=4, seed=0)


def test_mofa_shapes_and_finite(mofa_fit):
    assert mofa_fit.factors.shape == (200, 4)
    assert [w.shape for w in mofa_fit.weights] == [(30, 4), (20, 4)]
    assert [p.shape for p in mofa_fit.precisions] == [(30,), (20,)]
    assert np.isfinite(mofa_fit.factors).all()
    assert all(np.isfinite(w).all() for w in mofa_fit.weights)
    assert all((p > 0).all() for p in mofa_fit.precisions)


def test_mofa_cross_modal_prediction(linear_data, mofa_fit):
    a, b, _ = linear_data
    b_from_a = mofa_fit.predict([a[200:], None], source=0, target=1)
    a_from_b = mofa_fit.predict([None, b[200:]], source=1, target=0)
    assert b_from_a.shape == (100, 20)
    assert np.mean(r2_per_feature(b[200:], b_from_a)) > 0.6
    assert np.mean(r2_per_feature(a[200:], a_from_b)) > 0.6


def test_mofa_factors_carry_the_label(linear_data, mofa_fit):
    a, b, labels = linear_data
    z_test = mofa_fit.infer_factors([a[200:], b[200:]], views=[0, 1])
    assert label_auc(mofa_fit.factors, labels[:200], z_test, labels[200:]) > 0.85


def test_mofa_missing_source_values(linear_data, mofa_fit):
    a, _, _ = linear_data
    a_test = a[200:].copy()
    a_test[0] = np.nan  # a sample without its source: prior mean, i.e. the training mean of the target
    a_test[1, :10] = np.nan
    prediction = mofa_fit.predict([a_test, None], source=0, target=1)
    assert np.isfinite(prediction).all()
    np.testing.assert_allclose(prediction[0], mofa_fit.means[1])


def test_mofa_rejects_views_of_different_samples():
    with pytest.raises(ValueError, match="same samples"):
        fit_mofa([np.zeros((10, 3)), np.zeros((9, 3))])


def test_ridge_and_cca_reach_the_linear_ceiling(linear_data):
    a, b, _ = linear_data
    b_train = b[:200].copy()
    b_train[:40] = np.nan  # rows without the target are dropped from the fit
    ridge = ridge_predict(a[:200], b_train, a[200:])
    cca = cca_predict(a[:200], b_train, a[200:], n_components=2)
    assert ridge.shape == cca.shape == (100, 20)
    assert np.mean(r2_per_feature(b[200:], ridge)) > 0.7
    assert np.mean(r2_per_feature(b[200:], cca)) > 0.5  # sklearn CCA.predict is below ridge but far above 0


def test_ridge_on_unrelated_data_is_near_zero():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 20)), rng.normal(size=(300, 5))
    r2 = np.mean(r2_per_feature(y[200:], ridge_predict(x[:200], y[:200], x[200:])))
    assert -0.1 < r2 < 0.05
