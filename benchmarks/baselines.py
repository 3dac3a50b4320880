"""Linear baselines for the benchmarks: MOFA+ (mofapy2), ridge regression and CCA.

Every function works on numpy arrays (samples x features) with a train/test split: fit on the training
samples, predict a target modality of held-out samples from a source modality. ``NaN`` marks a value (or a
whole sample of a view) that was not measured.

- :func:`fit_mofa` fits MOFA+ on all views of the training samples; :meth:`MofaFit.infer_factors` infers the
  factors of new samples from a chosen subset of views and :meth:`MofaFit.predict` reconstructs a target view
  from them (the MOFA+ analogue of cross-modal prediction).
- :func:`ridge_predict` and :func:`cca_predict` regress the target on the source (the linear ceiling).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV

#: ridge penalties searched by :func:`ridge_predict` (leave-one-out CV of RidgeCV)
RIDGE_ALPHAS = np.logspace(-2, 5, 15)


@dataclass
class MofaFit:
    """A MOFA+ model fit on training samples, reduced to what out-of-sample inference needs.

    Attributes
    ----------
    means
        Per view, the training mean of each feature (subtracted before fitting, added back by :meth:`predict`).
    weights
        Per view, the posterior mean of the loadings ``W_m`` (features x factors).
    precisions
        Per view, the posterior mean of the Gaussian noise precision ``tau_m`` of each feature.
    factors
        Posterior mean of the factors ``Z`` of the training samples (samples x factors).
    """

    means: list[np.ndarray]
    weights: list[np.ndarray]
    precisions: list[np.ndarray]
    factors: np.ndarray

    @property
    def n_factors(self) -> int:
        """Number of factors."""
        return self.factors.shape[1]

    def infer_factors(self, data: Sequence[np.ndarray | None], views: Sequence[int]) -> np.ndarray:
        """Posterior mean of the factors of new samples given only the views ``views``.

        With the MOFA+ likelihood ``x_m = W_m z + eps``, ``eps ~ N(0, diag(1/tau_m))`` and a standard normal
        prior on ``z``, the posterior mean given the observed entries ``o`` of the chosen views is the
        noise-weighted ridge solution ``z = (W_o^T T_o W_o + I)^-1 W_o^T T_o (x_o - mu_o)`` with
        ``T_o = diag(tau_o)``. It is solved per sample, over that sample's non-``NaN`` entries; a sample with
        no observed entry gets ``z = 0`` (the prior mean).

        Parameters
        ----------
        data
            Per view (same order as at fit time), the new samples' data (samples x features) or ``None`` for
            views not used; every used view must have the same number of samples.
        views
            Indices of the views to infer the factors from.

        Returns
        -------
        Factors, samples x ``n_factors``.
        """
        views = list(views)
        n_obs = {np.asarray(data[v]).shape[0] for v in views}
        if len(n_obs) != 1:
            raise ValueError(f"the views {views} have different numbers of samples {sorted(n_obs)}")
        x = np.concatenate([np.asarray(data[v], dtype=np.float64) - self.means[v] for v in views], axis=1)
        w = np.concatenate([self.weights[v] for v in views], axis=0)
        tau = np.concatenate([self.precisions[v] for v in views])
        z = np.zeros((x.shape[0], self.n_factors))
        eye = np.eye(self.n_factors)
        for i, row in enumerate(x):
            observed = ~np.isnan(row)
            if not observed.any():
                continue
            w_o, tau_o = w[observed], tau[observed]
            z[i] = np.linalg.solve(w_o.T @ (tau_o[:, None] * w_o) + eye, w_o.T @ (tau_o * row[observed]))
        return z

    def predict(self, data: Sequence[np.ndarray | None], source: int | Sequence[int], target: int) -> np.ndarray:
        """Cross-modal prediction: reconstruct view ``target`` as ``Z W_t^T + mu_t`` from factors of ``source``.

        Parameters
        ----------
        data
            Per view, the new samples' data or ``None`` (only the source views are read).
        source
            View index (or indices) to infer the factors from (:meth:`infer_factors`).
        target
            View index to reconstruct.

        Returns
        -------
        Predicted target, samples x features of the target view.
        """
        sources = [source] if isinstance(source, int | np.integer) else list(source)
        z = self.infer_factors(data, sources)
        return z @ self.weights[target].T + self.means[target]

    def predict_refit(
        self, train: Sequence[np.ndarray | None], test: Sequence[np.ndarray | None], source, target: int
    ) -> np.ndarray:
        """Cross-modal prediction with a refitted linear read-out instead of the loadings ``W_t``.

        Factors are inferred from the source view(s) only (:meth:`infer_factors`) for the training and the
        test samples; the target is then regressed on the training samples' inferred factors (least squares
        with an intercept, over the training samples with the target fully observed) and the regression is
        applied to the test samples. This corrects for the factors being less well determined by the
        source alone than by all views, which the plain reconstruction ``Z W_t^T`` ignores.

        Parameters
        ----------
        train, test
            Per view, the training samples' data (the ones MOFA+ was fit on) and the new samples' data.
        source
            View index (or indices) to infer the factors from.
        target
            View index to predict.

        Returns
        -------
        Predicted target of the test samples.
        """
        sources = [source] if isinstance(source, int | np.integer) else list(source)
        y = np.asarray(train[target], dtype=np.float64)
        keep = ~np.isnan(y).any(axis=1)
        z_train = self.infer_factors(train, sources)[keep]
        design = np.column_stack([z_train, np.ones(len(z_train))])
        coef = np.linalg.lstsq(design, y[keep], rcond=None)[0]
        z_test = self.infer_factors(test, sources)
        return np.column_stack([z_test, np.ones(len(z_test))]) @ coef


def fit_mofa(
    views: Sequence[np.ndarray], n_factors: int = 10, seed: int = 0, iterations: int = 1000, float32: bool = False
) -> MofaFit:
    """Fit MOFA+ (mofapy2) on the training samples of several views.

    Every view gets a Gaussian likelihood; features are centred with their training mean (``NaN``-aware)
    before fitting (MOFA+'s own group centring is then a no-op) and are not scaled (scale them beforehand
    if wanted). One group, ``n_factors`` factors with ARD and spike-and-slab priors on the weights (MOFA+
    defaults), no factor dropping, ``convergence_mode="fast"``, mofapy2's output silenced. Missing values
    (``NaN``, including whole samples missing from a view) are handled by MOFA+.

    Parameters
    ----------
    views
        Training data per view, each samples x features with the same samples in the same order.
    n_factors
        Number of factors ``K``.
    seed
        Seed of mofapy2's initialisation.
    iterations
        Maximum number of variational iterations.
    float32
        Compute in float32 (faster, slightly less precise).

    Returns
    -------
    The fitted loadings, noise precisions, feature means and training factors (:class:`MofaFit`).
    """
    from mofapy2.run.entry_point import entry_point

    views = [np.asarray(v, dtype=np.float64) for v in views]
    if len({v.shape[0] for v in views}) != 1:
        raise ValueError(f"all views must have the same samples, got {[v.shape[0] for v in views]} samples")
    means = [np.nan_to_num(np.nanmean(v, axis=0)) for v in views]
    centred = [v - mu for v, mu in zip(views, means, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        ent = entry_point()
        ent.set_data_options(scale_views=False, center_groups=False, use_float32=float32)
        ent.set_data_matrix([[v] for v in centred], likelihoods=["gaussian"] * len(views))
        ent.set_model_options(factors=n_factors, spikeslab_weights=True, ard_weights=True)
        ent.set_train_options(iter=iterations, convergence_mode="fast", seed=seed, verbose=False, quiet=True)
        ent.build()
        ent.run()
    nodes = ent.model.nodes
    weights = [np.asarray(w, dtype=np.float64) for w in nodes["W"].getExpectation()]
    precisions = []
    for tau in nodes["Tau"].getExpectation():
        tau = np.asarray(tau, dtype=np.float64)
        precisions.append(tau.mean(axis=0) if tau.ndim == 2 else tau)
    factors = np.asarray(nodes["Z"].getExpectation(), dtype=np.float64)
    return MofaFit(means=means, weights=weights, precisions=precisions, factors=factors)


def _complete_training_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = ~(np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1))
    if keep.sum() < 3:
        raise ValueError(f"only {keep.sum()} training samples have both source and target without NaN")
    return x[keep], y[keep]


def _impute_test(x_test: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    x_test = np.array(x_test, dtype=np.float64)
    return np.where(np.isnan(x_test), x_train.mean(axis=0), x_test)


def ridge_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    alpha_per_target: bool = False,
) -> np.ndarray:
    """Predict the target of held-out samples from the source by ridge regression.

    :class:`sklearn.linear_model.RidgeCV` (one penalty for all targets, or one per target feature with
    ``alpha_per_target``, chosen by efficient leave-one-out CV among ``alphas``) is fit on the training samples that
    have both source and target without ``NaN``; ``NaN`` source values of test samples are replaced by the training
    mean.

    Parameters
    ----------
    x_train, y_train
        Source and target of the training samples.
    x_test
        Source of the test samples.
    alphas
        Candidate penalties.
    alpha_per_target
        Choose the penalty per target feature instead of one for all.

    Returns
    -------
    Predicted target of the test samples.
    """
    x, y = _complete_training_rows(x_train, y_train)
    model = RidgeCV(alphas=np.asarray(alphas), alpha_per_target=alpha_per_target).fit(x, y)
    return model.predict(_impute_test(x_test, x))


def cca_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_components: int = 2, n_pca: int = 20
) -> np.ndarray:
    """Predict the target of held-out samples from the source through canonical correlation analysis.

    With more features than samples plain CCA finds perfectly correlated, meaningless directions, so each
    side is first reduced to its top ``n_pca`` principal components (PCA fit on the training samples; a
    common PCA-CCA). :class:`sklearn.cross_decomposition.CCA` with ``n_components`` pairs of canonical
    variates (scores standardised, ``max_iter=2000``) is fit on the training samples with both source and
    target without ``NaN``; :meth:`~sklearn.cross_decomposition.CCA.predict` regresses the target's PC scores
    on the source's canonical variates and the PCA is inverted to give the target features. ``NaN`` source
    values of test samples are replaced by the training mean.

    Parameters
    ----------
    x_train, y_train
        Source and target of the training samples.
    x_test
        Source of the test samples.
    n_components
        Number of canonical components (capped at the number of principal components).
    n_pca
        Number of principal components kept on each side (capped at the features and samples - 1).

    Returns
    -------
    Predicted target of the test samples.
    """
    x, y = _complete_training_rows(x_train, y_train)
    pca_x = PCA(n_components=min(n_pca, x.shape[1], x.shape[0] - 1)).fit(x)
    pca_y = PCA(n_components=min(n_pca, y.shape[1], y.shape[0] - 1)).fit(y)
    scores_x, scores_y = pca_x.transform(x), pca_y.transform(y)
    n_components = max(1, min(n_components, scores_x.shape[1], scores_y.shape[1]))
    with np.errstate(all="ignore"):
        model = CCA(n_components=n_components, max_iter=2000).fit(scores_x, scores_y)
        predicted_scores = model.predict(pca_x.transform(_impute_test(x_test, x)))
    return pca_y.inverse_transform(predicted_scores)
