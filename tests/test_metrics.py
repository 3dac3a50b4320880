import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from spvi.metrics import knn_accuracy, label_auc, latent_recovery_r2, pearson_per_feature, r2_per_feature


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=(25, 4))
    y_pred = y_true + rng.normal(scale=[0.1, 0.5, 1.0, 3.0], size=(25, 4))
    return y_true, y_pred


def test_r2_matches_sklearn(pair):
    y_true, y_pred = pair
    expected = r2_score(y_true, y_pred, multioutput="raw_values")
    np.testing.assert_allclose(r2_per_feature(y_true, y_pred), expected)
    np.testing.assert_allclose(r2_per_feature(sparse.csr_matrix(y_true), y_pred), expected)
    np.testing.assert_allclose(r2_per_feature(pd.DataFrame(y_true), pd.DataFrame(y_pred)), expected)
    np.testing.assert_allclose(r2_per_feature(y_true[:, 0], y_pred[:, 0]), expected[:1])
    assert r2_per_feature(y_true, y_pred)[3] < 0 < r2_per_feature(y_true, y_pred)[0]
    np.testing.assert_allclose(r2_per_feature(y_true, y_true), 1.0)


def test_r2_nan_and_constant(pair):
    y_true, y_pred = pair
    y_true = y_true.copy()
    y_true[[1, 4, 7], 1] = np.nan
    y_true[:, 2] = 1.5
    r2 = r2_per_feature(y_true, y_pred)
    keep = ~np.isnan(y_true[:, 1])
    assert r2[1] == pytest.approx(r2_score(y_true[keep, 1], y_pred[keep, 1]))
    assert r2[0] == pytest.approx(r2_score(y_true[:, 0], y_pred[:, 0]))
    assert np.isnan(r2[2])
    with pytest.raises(ValueError, match="same shape, got \\(25, 4\\) and \\(25, 3\\)"):
        r2_per_feature(y_true, y_pred[:, :3])


def test_pearson_matches_scipy(pair):
    y_true, y_pred = pair
    expected = [stats.pearsonr(y_true[:, j], y_pred[:, j]).statistic for j in range(4)]
    np.testing.assert_allclose(pearson_per_feature(y_true, y_pred), expected)
    np.testing.assert_allclose(pearson_per_feature(y_true, -y_true), -1.0)


def test_pearson_nan_and_constant(pair):
    y_true, y_pred = pair
    y_true, y_pred = y_true.copy(), y_pred.copy()
    y_true[[0, 3], 0] = np.nan
    y_pred[[5], 0] = np.nan
    y_true[:, 1] = 2.0
    y_pred[:, 2] = -1.0
    r = pearson_per_feature(y_true, y_pred)
    keep = ~np.isnan(y_true[:, 0]) & ~np.isnan(y_pred[:, 0])
    assert r[0] == pytest.approx(stats.pearsonr(y_true[keep, 0], y_pred[keep, 0]).statistic)
    assert np.isnan(r[1])
    assert np.isnan(r[2])
    assert r[3] == pytest.approx(stats.pearsonr(y_true[:, 3], y_pred[:, 3]).statistic)


@pytest.fixture
def latent() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 3))
    z[:, 1] *= 10.0
    labels = np.where(z[:, 0] + 0.5 * rng.normal(size=200) > 0, "mutated", "unmutated")
    return z, labels


def test_label_auc_separable():
    z = np.array([[-2.0, 0.1], [-1.5, -0.3], [-1.0, 0.2], [1.0, 0.0], [1.4, -0.2], [2.0, 0.3]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert label_auc(z, labels, z[::-1], labels[::-1]) == 1.0
    assert knn_accuracy(z, labels, z, labels, n_neighbors=3) == 1.0


def test_label_auc_matches_sklearn(latent):
    z, labels = latent
    scaler = StandardScaler().fit(z[:100])
    classifier = LogisticRegression(max_iter=1000).fit(scaler.transform(z[:100]), labels[:100])
    probability = classifier.predict_proba(scaler.transform(z[100:]))[:, 1]
    expected = roc_auc_score(labels[100:] == classifier.classes_[1], probability)
    auc = label_auc(z[:100], labels[:100], z[100:], labels[100:])
    assert auc == pytest.approx(expected)
    assert 0.8 < auc < 1.0
    # a latent that carries no label information scores about 0.5
    noise = np.random.default_rng(2).normal(size=z.shape)
    assert abs(label_auc(noise[:100], labels[:100], noise[100:], labels[100:]) - 0.5) < 0.15


def test_label_auc_multiclass_and_missing(latent):
    z, _ = latent
    labels = np.digitize(z[:, 0], [-0.5, 0.5]).astype(float)
    scaler = StandardScaler().fit(z[:120])
    classifier = LogisticRegression(max_iter=1000).fit(scaler.transform(z[:120]), labels[:120])
    probabilities = classifier.predict_proba(scaler.transform(z[120:]))
    expected = roc_auc_score(labels[120:], probabilities, multi_class="ovr", average="macro")
    assert label_auc(z[:120], labels[:120], z[120:], labels[120:]) == pytest.approx(expected)
    # cells without a label are left out
    with_missing = labels.copy()
    with_missing[[0, 10, 150]] = np.nan
    keep = ~np.isnan(with_missing)
    expected_missing = label_auc(
        z[:120][keep[:120]], labels[:120][keep[:120]], z[120:][keep[120:]], labels[120:][keep[120:]]
    )
    assert label_auc(z[:120], with_missing[:120], z[120:], with_missing[120:]) == pytest.approx(expected_missing)


def test_label_auc_errors(latent):
    z, labels = latent
    with pytest.raises(ValueError, match="the test split has 1 class"):
        label_auc(z[:100], labels[:100], z[labels == "mutated"], labels[labels == "mutated"])
    with pytest.raises(ValueError, match="the train split has 1 class"):
        label_auc(z[labels == "mutated"], labels[labels == "mutated"], z, labels)
    with pytest.raises(ValueError, match="classes \\['other'\\] that do not occur in the train split"):
        label_auc(z[:100], labels[:100], z[100:], np.where(labels[100:] == "mutated", "other", labels[100:]))
    with pytest.raises(ValueError, match="y_train has 99 labels but z_train has 100 cells"):
        label_auc(z[:100], labels[:99], z[100:], labels[100:])


def test_knn_accuracy_matches_sklearn(latent):
    z, labels = latent
    predicted = KNeighborsClassifier(n_neighbors=15).fit(z[:100], labels[:100]).predict(z[100:])
    accuracy = knn_accuracy(z[:100], labels[:100], z[100:], labels[100:])
    assert accuracy == pytest.approx(np.mean(predicted == labels[100:]))
    with pytest.raises(ValueError, match="n_neighbors must be between 1 and the 100 labelled train cells"):
        knn_accuracy(z[:100], labels[:100], z[100:], labels[100:], n_neighbors=101)


def test_latent_recovery_r2_sees_through_nonlinear_maps_and_rejects_unrelated_blocks():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-2, 2, size=(1200, 2))
    # a learned block that is a non-linear, invertible transform of the truth (plus a little noise)
    recovered = np.column_stack([np.tanh(truth[:, 0]), truth[:, 1] ** 3]) + rng.normal(scale=0.01, size=(1200, 2))
    unrelated = rng.normal(size=(1200, 2))
    train, test = slice(0, 1000), slice(1000, None)
    r2 = latent_recovery_r2(recovered[train], truth[train], recovered[test], truth[test])
    assert r2.shape == (2,)
    assert (r2 > 0.95).all()
    r2_unrelated = latent_recovery_r2(unrelated[train], truth[train], unrelated[test], truth[test])
    assert (r2_unrelated < 0.1).all()
    # a block that holds only the first factor recovers that one and not the second
    partial = latent_recovery_r2(truth[train, :1], truth[train], truth[test, :1], truth[test])
    assert partial[0] > 0.95
    assert partial[1] < 0.1


def test_latent_recovery_r2_errors():
    z = np.zeros((10, 2))
    with pytest.raises(ValueError, match="same cells"):
        latent_recovery_r2(z, np.zeros((9, 1)), z, np.zeros((10, 1)))
    with pytest.raises(ValueError, match="n_neighbors"):
        latent_recovery_r2(z, np.zeros((10, 1)), z, np.zeros((10, 1)), n_neighbors=11)
