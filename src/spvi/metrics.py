"""Evaluation metrics: per-feature reconstruction quality and label information in a latent space."""

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.preprocessing import StandardScaler


def _as_columns(x, name: str) -> np.ndarray:
    """A dense 2-D float64 copy of a numpy array, scipy sparse matrix or pandas object (1-D = one column)."""
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    x = np.array(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (observations x features), got shape {x.shape}")
    return x


def _paired_columns(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` as 2-D float arrays of the same shape."""
    y_true = _as_columns(y_true, "y_true")
    y_pred = _as_columns(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}")
    return y_true, y_pred


def _nan_constant_columns(values: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """True for columns whose measured values are all equal (or that have fewer than two)."""
    high = np.max(np.where(measured, values, -np.inf), axis=0)
    low = np.min(np.where(measured, values, np.inf), axis=0)
    return (measured.sum(axis=0) < 2) | (high <= low)


def r2_per_feature(y_true, y_pred) -> np.ndarray:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of each feature (column).

    ``SS_tot`` is taken around the column mean of ``y_true``, as in :func:`sklearn.metrics.r2_score`.

    Parameters
    ----------
    y_true
        Observed values, observations x features (numpy, scipy sparse or pandas; 1-D is one feature).
        NaN marks a value that was not measured; it is left out of that feature's sums.
    y_pred
        Predicted values of the same shape.

    Returns
    -------
    One R² per feature; NaN for a feature whose observed values are constant (or fewer than two), where R²
    is undefined (:func:`sklearn.metrics.r2_score` would report 0 or 1 there).
    """
    y_true, y_pred = _paired_columns(y_true, y_pred)
    measured = ~np.isnan(y_true)
    n_measured = measured.sum(axis=0)
    mean = np.divide(np.nansum(y_true, axis=0), n_measured, out=np.zeros(y_true.shape[1]), where=n_measured > 0)
    ss_tot = np.sum(np.where(measured, y_true - mean, 0.0) ** 2, axis=0)
    ss_res = np.sum(np.where(measured, y_true - y_pred, 0.0) ** 2, axis=0)
    constant = _nan_constant_columns(y_true, measured)
    r2 = np.full(y_true.shape[1], np.nan)
    r2[~constant] = 1.0 - ss_res[~constant] / ss_tot[~constant]
    return r2


def pearson_per_feature(y_true, y_pred) -> np.ndarray:
    """Pearson correlation between observed and predicted values of each feature (column).

    Parameters
    ----------
    y_true
        Observed values, observations x features (numpy, scipy sparse or pandas; 1-D is one feature).
    y_pred
        Predicted values of the same shape. Entries where either value is NaN are left out of that
        feature's correlation.

    Returns
    -------
    One correlation per feature; NaN where either side is constant over the entries used (or fewer than
    two entries remain).
    """
    y_true, y_pred = _paired_columns(y_true, y_pred)
    used = ~np.isnan(y_true) & ~np.isnan(y_pred)
    n_used = used.sum(axis=0)
    n_safe = np.maximum(n_used, 1)
    true_centred = np.where(used, y_true - np.sum(np.where(used, y_true, 0.0), axis=0) / n_safe, 0.0)
    pred_centred = np.where(used, y_pred - np.sum(np.where(used, y_pred, 0.0), axis=0) / n_safe, 0.0)
    constant = _nan_constant_columns(y_true, used) | _nan_constant_columns(y_pred, used)
    cov = np.sum(true_centred * pred_centred, axis=0)
    norm = np.sqrt(np.sum(true_centred**2, axis=0) * np.sum(pred_centred**2, axis=0))
    r = np.full(y_true.shape[1], np.nan)
    r[~constant] = np.clip(cov[~constant] / norm[~constant], -1.0, 1.0)
    return r


def _labelled(z, y, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Latent ``z`` and labels ``y`` of one split, restricted to the cells with a label."""
    z = _as_columns(z, f"z_{split}")
    y = pd.Series(np.asarray(y, dtype=object))
    if len(y) != z.shape[0]:
        raise ValueError(f"y_{split} has {len(y)} labels but z_{split} has {z.shape[0]} cells")
    has_label = y.notna().to_numpy()
    # rebuild the array from its values so that labels left as objects (e.g. floats next to NaN) get a plain dtype
    return z[has_label], np.array(y[has_label].tolist())


def _check_splits(z_train, y_train, z_test, y_test) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labelled cells of both splits; raises when a split has fewer than two classes or an unseen class."""
    z_train, y_train = _labelled(z_train, y_train, "train")
    z_test, y_test = _labelled(z_test, y_test, "test")
    if z_train.shape[1] != z_test.shape[1]:
        raise ValueError(
            f"z_train and z_test must have the same number of dimensions, got {z_train.shape[1]} and {z_test.shape[1]}"
        )
    for split, labels in (("train", y_train), ("test", y_test)):
        classes = pd.unique(labels)
        if len(classes) < 2:
            raise ValueError(
                f"the {split} split has {len(classes)} class(es) {list(classes)} among its labelled cells; "
                "at least 2 are needed"
            )
    unseen = set(pd.unique(y_test)) - set(pd.unique(y_train))
    if unseen:
        raise ValueError(f"the test split has classes {sorted(map(str, unseen))} that do not occur in the train split")
    return z_train, y_train, z_test, y_test


def label_auc(z_train, y_train, z_test, y_test) -> float:
    """ROC AUC of a logistic regression that predicts a label from a latent representation.

    The latent dimensions are standardised with the mean and standard deviation of the training cells,
    a :class:`~sklearn.linear_model.LogisticRegression` (``max_iter=1000``) is fit on the training cells and
    scored on the test cells. Cells whose label is missing (NaN, None) are left out.

    Parameters
    ----------
    z_train
        Latent representation of the training cells, cells x dimensions.
    y_train
        Label of each training cell.
    z_test
        Latent representation of the test cells.
    y_test
        Label of each test cell; its classes must occur in ``y_train``.

    Returns
    -------
    For a binary label the AUC of the positive class (the second of the sorted classes; the AUC of the other
    class is the same); for more classes the macro average of the one-vs-rest AUCs over the classes present
    in ``y_test``.
    """
    z_train, y_train, z_test, y_test = _check_splits(z_train, y_train, z_test, y_test)
    scaler = StandardScaler().fit(z_train)
    classifier = LogisticRegression(max_iter=1000).fit(scaler.transform(z_train), y_train)
    probabilities = classifier.predict_proba(scaler.transform(z_test))
    aucs = [
        roc_auc_score(y_test == cls, probabilities[:, j])
        for j, cls in enumerate(classifier.classes_)
        if np.any(y_test == cls)
    ]
    if len(classifier.classes_) == 2:
        return float(aucs[1])
    return float(np.mean(aucs))


def knn_accuracy(z_train, y_train, z_test, y_test, n_neighbors: int = 15) -> float:
    """Accuracy of a k-nearest-neighbour classifier that predicts a label from a latent representation.

    Neighbours are found with the Euclidean distance in the latent space as given (no standardisation).
    Cells whose label is missing (NaN, None) are left out.

    Parameters
    ----------
    z_train
        Latent representation of the training cells, cells x dimensions.
    y_train
        Label of each training cell.
    z_test
        Latent representation of the test cells.
    y_test
        Label of each test cell; its classes must occur in ``y_train``.
    n_neighbors
        Number of training neighbours that vote for each test cell.

    Returns
    -------
    Fraction of test cells whose label is predicted correctly.
    """
    z_train, y_train, z_test, y_test = _check_splits(z_train, y_train, z_test, y_test)
    if not 1 <= n_neighbors <= len(y_train):
        raise ValueError(
            f"n_neighbors must be between 1 and the {len(y_train)} labelled train cells, got {n_neighbors}"
        )
    classifier = KNeighborsClassifier(n_neighbors=n_neighbors).fit(z_train, y_train)
    return float(np.mean(classifier.predict(z_test) == y_test))


def latent_recovery_r2(z_train, true_train, z_test, true_test, n_neighbors: int = 15) -> np.ndarray:
    """How well a learned latent block determines known latent factors (simulations with a known truth).

    A VAE recovers latent factors only up to an invertible, possibly non-linear map, so the learned block is
    compared with the truth through a flexible regression: the block is standardised with the training
    statistics, a :class:`~sklearn.neighbors.KNeighborsRegressor` predicts each true factor from it on the
    training cells, and the R² (:func:`r2_per_feature`) of that prediction is computed on the test cells.
    R² near 1: the block determines the factor; near 0 or below: it carries no information about it.

    Parameters
    ----------
    z_train, z_test
        Learned latent block of the training and test cells, cells x dimensions.
    true_train, true_test
        True latent factors of the same cells, cells x factors.
    n_neighbors
        Number of training neighbours averaged for each test cell.

    Returns
    -------
    One held-out R² per true factor.
    """
    z_train, z_test = _as_columns(z_train, "z_train"), _as_columns(z_test, "z_test")
    true_train, true_test = _as_columns(true_train, "true_train"), _as_columns(true_test, "true_test")
    if len(z_train) != len(true_train) or len(z_test) != len(true_test):
        raise ValueError(
            f"latent and true factors must have the same cells: {len(z_train)} vs {len(true_train)} (train), "
            f"{len(z_test)} vs {len(true_test)} (test)"
        )
    if not 1 <= n_neighbors <= len(z_train):
        raise ValueError(f"n_neighbors must be between 1 and the {len(z_train)} train cells, got {n_neighbors}")
    scaler = StandardScaler().fit(z_train)
    regression = KNeighborsRegressor(n_neighbors=n_neighbors).fit(scaler.transform(z_train), true_train)
    return r2_per_feature(true_test, regression.predict(scaler.transform(z_test)))
