"""Preprocessing: the label-driven feature selection of Märtens & Yau (2023)."""

from collections.abc import Sequence
from copy import deepcopy

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from spvi._logging import no_pull_on_update


def _dense_float(x) -> np.ndarray:
    """A dense 2-D float64 copy of a numpy array, scipy sparse matrix or DataFrame."""
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    x = np.array(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D matrix (observations x features), got an array of shape {x.shape}")
    return x


def rank_features_by_association(X, labels) -> np.ndarray:
    """Score each feature by its association with a categorical label (one-way ANOVA F statistic).

    For each feature the observations are grouped by label and the F statistic
    ``(SS_between / (k - 1)) / (SS_within / (n - k))`` is computed, with ``n`` the number of observations in
    which the feature is measured and ``k`` the number of label groups among them. For two groups it equals
    the square of the pooled two-sample t statistic.

    Parameters
    ----------
    X
        Observations x features, dense or scipy sparse. NaN marks a value that was not measured and is
        ignored for that feature only.
    labels
        One label per observation (binary or multi-class). Missing labels (NaN, None) are ignored.

    Returns
    -------
    One non-negative score per feature. A feature with zero variance, fewer than two label groups or no
    within-group degrees of freedom scores 0; a non-constant feature with zero within-group variance
    (perfect separation) scores ``inf``.
    """
    x = _dense_float(X)
    labels = pd.Series(np.asarray(labels, dtype=object))
    if len(labels) != x.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries but X has {x.shape[0]} observations")
    has_label = labels.notna().to_numpy()
    x = x[has_label]
    codes, _ = pd.factorize(labels[has_label])

    measured = ~np.isnan(x)
    n_measured = measured.sum(axis=0)
    grand_mean = np.divide(np.nansum(x, axis=0), n_measured, out=np.zeros(x.shape[1]), where=n_measured > 0)
    n_groups = np.zeros(x.shape[1])
    ss_between = np.zeros(x.shape[1])
    ss_within = np.zeros(x.shape[1])
    for code in np.unique(codes):
        group = x[codes == code]
        n_group = measured[codes == code].sum(axis=0)
        group_mean = np.divide(np.nansum(group, axis=0), n_group, out=np.zeros(x.shape[1]), where=n_group > 0)
        n_groups += n_group > 0
        ss_between += n_group * (group_mean - grand_mean) ** 2
        ss_within += np.nansum((group - group_mean) ** 2, axis=0)

    constant = np.nanmax(x, axis=0, initial=-np.inf) <= np.nanmin(x, axis=0, initial=np.inf)
    df_between = n_groups - 1
    df_within = n_measured - n_groups
    scores = np.zeros(x.shape[1])
    valid = ~constant & (df_between >= 1) & (df_within >= 1)
    separated = valid & (ss_within <= 1e-12 * (ss_between + ss_within))
    regular = valid & ~separated
    scores[regular] = (ss_between[regular] / df_between[regular]) / (ss_within[regular] / df_within[regular])
    scores[separated] = np.inf
    return scores


def _train_mask(mdata: md.MuData, train_obs) -> pd.Series:
    """Boolean Series over ``mdata.obs_names``: True for the training cells."""
    if train_obs is None:
        return pd.Series(True, index=mdata.obs_names)
    train_obs = np.asarray(train_obs)
    if train_obs.dtype == bool:
        if train_obs.shape != (mdata.n_obs,):
            raise ValueError(
                f"train_obs as a boolean mask must have one entry per cell of mdata ({mdata.n_obs}), "
                f"got shape {train_obs.shape}"
            )
        return pd.Series(train_obs, index=mdata.obs_names)
    unknown = pd.Index(train_obs).difference(mdata.obs_names)
    if len(unknown) > 0:
        raise ValueError(
            f"train_obs holds {len(unknown)} names that are not in mdata.obs_names, e.g. {list(unknown[:5])}"
        )
    return pd.Series(mdata.obs_names.isin(train_obs), index=mdata.obs_names)


def _select_in_modality(
    adata: ad.AnnData,
    mod: str,
    labels: pd.Series,
    is_train: np.ndarray,
    n_top: int,
    n_other: int | None,
    scale: bool,
) -> ad.AnnData:
    """Top-``n_top`` and bottom-``n_other`` features of one modality, ranked on its labelled train cells."""
    n_features = adata.n_vars
    if n_other is None:
        n_other = n_features - n_top
    if n_top + n_other > n_features:
        raise ValueError(
            f"modality '{mod}' has {n_features} features but n_top + n_other = {n_top} + {n_other} = "
            f"{n_top + n_other} were requested"
        )
    rank_cells = is_train & labels.notna().to_numpy()
    n_classes = labels[rank_cells].nunique()
    if n_classes < 2:
        raise ValueError(
            f"label '{labels.name}' has {n_classes} class(es) among the train cells of modality '{mod}' "
            f"({rank_cells.sum()} labelled train cells); at least 2 are needed to rank features"
        )
    scores = rank_features_by_association(adata.X[rank_cells], labels[rank_cells])
    order = np.argsort(-scores, kind="stable")
    keep = np.concatenate([order[:n_top], order[n_features - n_other :]])

    selected = adata[:, keep].copy()
    selected.var["is_shared"] = np.arange(len(keep)) < n_top
    selected.var["association"] = scores[keep]
    if scale:
        x = _dense_float(selected.X)
        mean = np.nanmean(x[is_train], axis=0)
        std = np.nanstd(x[is_train], axis=0)
        std = np.where(std > 0, std, 1.0)
        selected.X = ((x - mean) / std).astype(np.float32)
        selected.var["mean"] = mean
        selected.var["std"] = std
    return selected


def select_shared_and_other(
    mdata: md.MuData,
    label_key: str,
    n_top: int = 10,
    n_other: int | None = 1000,
    modalities: Sequence[str] | None = None,
    train_obs: Sequence[str] | np.ndarray | None = None,
    scale: bool = True,
) -> md.MuData:
    """Keep the features most and least associated with a label in each modality (Märtens & Yau 2023).

    Following the data preparation of Märtens & Yau (2023, arXiv:2403.06338), the features of each modality
    are ranked by their association with ``mdata.obs[label_key]`` (:func:`rank_features_by_association`),
    using only the training cells that are present in that modality and have a label. The ``n_top`` most
    associated features carry the label signal that the modalities share; the ``n_other`` least associated
    ones carry modality-specific variation. Ranking on training cells only keeps held-out labels out of the
    feature selection.

    Parameters
    ----------
    mdata
        Multi-modal data; left unchanged.
    label_key
        Column of ``mdata.obs`` with the label (binary or multi-class; missing values are ignored).
    n_top
        Number of most associated features kept per modality.
    n_other
        Number of least associated features kept per modality; ``None`` keeps all the remaining features.
    modalities
        Modalities to keep, in this order; default all.
    train_obs
        Training cells: names from ``mdata.obs_names`` or a boolean mask over them; default all cells.
    scale
        Centre and scale each kept feature to mean 0 and standard deviation 1 with the mean and standard
        deviation of the training cells of that modality (NaN-aware). The result is dense ``float32``.

    Returns
    -------
    A new MuData restricted to ``modalities`` and their cells (cell order kept in each modality), with the
    global ``obs`` and ``uns`` copied. In each modality the ``n_top`` most associated features come first
    (``var["is_shared"]`` True) followed by the ``n_other`` least associated ones (False), both in order
    of decreasing association; ``var["association"]`` holds the score and, when ``scale``, ``var["mean"]``
    and ``var["std"]`` the training statistics used.

    Examples
    --------
    >>> mdata = spvi.datasets.cll()
    >>> selected = spvi.pp.select_shared_and_other(mdata, "IGHV", n_top=10, n_other=1000, modalities=["rna", "meth"])
    """
    if label_key not in mdata.obs.columns:
        raise ValueError(
            f"label_key '{label_key}' is not a column of mdata.obs; available columns: {list(mdata.obs.columns)}"
        )
    if n_top < 0 or (n_other is not None and n_other < 0):
        raise ValueError(f"n_top and n_other must be >= 0, got n_top={n_top} and n_other={n_other}")
    modalities = list(mdata.mod) if modalities is None else list(modalities)
    unknown = [mod for mod in modalities if mod not in mdata.mod]
    if unknown:
        raise ValueError(f"modalities {unknown} are not in mdata; available modalities: {list(mdata.mod)}")
    is_train = _train_mask(mdata, train_obs)

    selected = {}
    for mod in modalities:
        adata = mdata[mod]
        labels = mdata.obs.loc[adata.obs_names, label_key]
        selected[mod] = _select_in_modality(
            adata, mod, labels, is_train[adata.obs_names].to_numpy(), n_top, n_other, scale
        )
    with no_pull_on_update():
        result = md.MuData(selected)
    result.obs = mdata.obs.loc[result.obs_names].copy()
    result.uns = deepcopy(dict(mdata.uns))
    return result
