"""Validation of a user's MuData and the internal, padded copy that scvi-tools registers.

scvi-tools' ``AnnDataManager`` only accepts fully paired MuData. spvi therefore never registers the
user's object: it builds a new MuData with the same cells in the same order, one AnnData per selected
modality, cells that lack a modality padded with zero rows, and an explicit presence mask in
``.obsm`` that the model uses to drop every term that involves a missing modality. The user's MuData
is only read. Modalities that already cover every cell in order are referenced, not copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from spvi._constants import PRESENCE_OBSM_KEY, UNLABELED_CATEGORY
from spvi._likelihoods import LIKELIHOODS

_UNLABELED_VALUES = ("unknown", "nan", "None", "")


def _describe(modality: str, layer: str | None) -> str:
    return f"modality {modality!r}, " + (f"layer {layer!r}" if layer is not None else ".X")


def resolve_modalities(mdata: MuData, modalities: Sequence[str] | None) -> list[str]:
    """The modalities to model, checked to exist in ``mdata``."""
    if not isinstance(mdata, MuData):
        raise TypeError(f"spvi needs a MuData object, got {type(mdata).__name__}")
    available = list(mdata.mod)
    modalities = available if modalities is None else list(modalities)
    if isinstance(modalities, str) or len(modalities) < 2:
        raise ValueError(f"modalities must name at least two modalities of the MuData, got {modalities!r}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities contains duplicates: {modalities!r}")
    missing = [m for m in modalities if m not in mdata.mod]
    if missing:
        raise ValueError(f"modality {missing[0]!r} not found in the MuData; available modalities: {available}")
    return modalities


def _check_keys(option: str, mapping: Mapping | None, modalities: list[str]) -> dict:
    mapping = dict(mapping or {})
    unknown = [key for key in mapping if key not in modalities]
    if unknown:
        raise ValueError(f"{option} names modality {unknown[0]!r}, which is not one of the modalities {modalities}")
    return mapping


def layer_matrix(adata: AnnData, modality: str, layer: str | None):
    """The data matrix of one modality (``.X`` or a layer)."""
    if layer is None:
        if adata.X is None:
            raise ValueError(f"modality {modality!r} has no .X; pass its layer in layers={{{modality!r}: ...}}")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(
            f"layer {layer!r} not found in modality {modality!r}; available layers: {list(adata.layers)} (None = .X)"
        )
    return adata.layers[layer]


def _values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix (for checks that need not see implicit zeros)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix)


def _is_count_data(values: np.ndarray) -> bool:
    if values.size == 0:
        return True
    if not np.isfinite(values).all():
        return False
    return bool((values >= 0).all() and (np.mod(values, 1) == 0).all())


def check_matrix(matrix, modality: str, layer: str | None, likelihood: str | None) -> str:
    """Check one modality's data for its likelihood; return the likelihood (chosen from the data if ``None``).

    Integer counts default to ``"nb"``, anything else to ``"gaussian"``. ``inf`` is always an error;
    ``NaN`` is allowed only under ``"gaussian"`` (it marks entries that were not measured).
    """
    where = _describe(modality, layer)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {matrix.shape})")
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        raise TypeError(f"{where} must be a numpy array or scipy sparse matrix, got {type(matrix).__name__}")
    values = _values(matrix)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise TypeError(f"{where} must hold real numbers, got dtype {values.dtype}")
    if np.isinf(values).any():
        raise ValueError(f"{where} contains inf values; spvi needs finite data")
    if likelihood is None:
        likelihood = "nb" if _is_count_data(values) else "gaussian"
    if likelihood not in LIKELIHOODS:
        raise ValueError(
            f"likelihood {likelihood!r} for modality {modality!r} is unknown; choose one of {list(LIKELIHOODS)}"
        )
    if LIKELIHOODS[likelihood].is_count:
        if np.isnan(values).any():
            raise ValueError(
                f"{where} contains NaN, but likelihood {likelihood!r} needs complete counts "
                "(NaN means 'not measured' only for likelihood 'gaussian')"
            )
        if (values < 0).any():
            raise ValueError(f"{where} contains negative values, but likelihood {likelihood!r} needs counts >= 0")
        if (np.mod(values, 1) != 0).any():
            raise ValueError(
                f"{where} contains non-integer values, but likelihood {likelihood!r} needs integer counts; "
                "use the raw counts layer or likelihood 'gaussian' for normalised data"
            )
    _warn_constant_features(matrix, where)
    return likelihood


def _warn_constant_features(matrix, where: str) -> None:
    """Warn about features that are constant over the observed cells (they carry no information)."""
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
        mean = np.asarray(matrix.mean(axis=0)).ravel()
        variance = np.asarray(matrix.multiply(matrix).mean(axis=0)).ravel() - mean**2
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            variance = np.nanvar(np.asarray(matrix, dtype=np.float64), axis=0)
    constant = ~(variance > 0)
    if constant.any():
        warnings.warn(
            f"{where} has {constant.sum()} constant features (zero variance, e.g. column {np.flatnonzero(constant)[0]}); "
            "they carry no information and could be removed",
            UserWarning,
            stacklevel=4,
        )


def _check_unique(names: pd.Index, what: str) -> None:
    if not names.is_unique:
        duplicated = names[names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"{what} are not unique (e.g. {duplicated}); make them unique, e.g. with .obs_names_make_unique()"
        )


def _categorical_column(mdata: MuData, key: str, option: str) -> pd.Series:
    if key not in mdata.obs.columns:
        raise ValueError(f"{option} {key!r} is not a column of mdata.obs; available columns: {list(mdata.obs.columns)}")
    return mdata.obs[key]


def label_column(labels: pd.Series) -> pd.Series:
    """Labels as strings, with ``NaN`` and ``"unknown"`` mapped to the internal unlabelled category."""
    as_str = labels.astype(object).where(labels.notna(), None)
    unlabeled = as_str.isna() | as_str.astype(str).isin(_UNLABELED_VALUES)
    return pd.Series(np.where(unlabeled, UNLABELED_CATEGORY, as_str.astype(str)), index=labels.index, dtype=object)


def _reorder_features(adata: AnnData, matrix, modality: str, feature_order: Sequence[str]):
    """Columns of ``matrix`` in the order of ``feature_order`` (the features a saved model was trained on)."""
    positions = adata.var_names.get_indexer(pd.Index(feature_order))
    if (positions < 0).any():
        missing = [name for name, p in zip(feature_order, positions, strict=True) if p < 0]
        raise ValueError(
            f"modality {modality!r} lacks {len(missing)} of the {len(feature_order)} features the model was trained "
            f"on (e.g. {missing[:5]})"
        )
    if np.array_equal(positions, np.arange(adata.n_vars)):
        return matrix, adata.var_names
    return matrix[:, positions], pd.Index(feature_order)


def _pad_rows(matrix, positions: np.ndarray):
    """Rows ``positions`` of ``matrix``; ``-1`` gives a zero row. Sparse stays sparse (CSR)."""
    present = positions >= 0
    if sp.issparse(matrix):
        padded = sp.vstack([sp.csr_matrix(matrix), sp.csr_matrix((1, matrix.shape[1]), dtype=matrix.dtype)])
        return padded.tocsr()[np.where(present, positions, matrix.shape[0])]
    padded = np.zeros((len(positions), matrix.shape[1]), dtype=np.float32)
    padded[present] = np.asarray(matrix)[positions[present]]
    return padded


def build_registered_mudata(
    mdata: MuData,
    modalities: list[str],
    layers: Mapping[str, str | None],
    likelihoods: Mapping[str, str | None],
    covariate_keys: Sequence[str],
    labels_key: str | None,
    feature_order: Mapping[str, Sequence[str]] | None = None,
) -> tuple[MuData, dict[str, str]]:
    """Validate ``mdata`` and build the padded MuData that scvi-tools registers.

    Parameters
    ----------
    mdata
        The user's MuData (only read).
    modalities
        Modalities to model.
    layers
        Layer per modality (``None`` or absent: ``.X``).
    likelihoods
        Likelihood per modality (``None`` or absent: chosen from the data).
    covariate_keys
        Categorical ``mdata.obs`` columns copied to the padded MuData (batch and covariates).
    labels_key
        ``mdata.obs`` column of labels, copied with unlabelled cells mapped to one category.
    feature_order
        Feature names per modality that a saved model expects; columns are reordered to match.

    Returns
    -------
    The padded MuData and the likelihood of each modality.
    """
    _check_unique(mdata.obs_names, "mdata.obs_names (cell names)")
    obs_names = mdata.obs_names
    presence = np.zeros((mdata.n_obs, len(modalities)), dtype=np.float32)
    padded_modalities, resolved_likelihoods = {}, {}
    for m, modality in enumerate(modalities):
        adata = mdata.mod[modality]
        layer = layers.get(modality)
        _check_unique(adata.obs_names, f"obs_names of modality {modality!r}")
        _check_unique(adata.var_names, f"var_names of modality {modality!r}")
        matrix = layer_matrix(adata, modality, layer)
        if sp.issparse(matrix) and not (isinstance(matrix, sp.spmatrix) and matrix.format == "csr"):
            matrix = sp.csr_matrix(matrix)  # scvi-tools reads CSR matrices (not sparse arrays) and slices rows
        resolved_likelihoods[modality] = check_matrix(matrix, modality, layer, likelihoods.get(modality))
        var_names = adata.var_names
        if feature_order is not None:
            matrix, var_names = _reorder_features(adata, matrix, modality, feature_order[modality])
        positions = adata.obs_names.get_indexer(obs_names)
        unknown_cells = ~adata.obs_names.isin(obs_names)
        if unknown_cells.any():
            raise ValueError(
                f"modality {modality!r} has cells that are not in mdata.obs_names (e.g. "
                f"{adata.obs_names[unknown_cells][:5].tolist()}); call mdata.update() after editing modalities"
            )
        presence[:, m] = positions >= 0
        if not np.array_equal(positions, np.arange(mdata.n_obs)):
            matrix = _pad_rows(matrix, positions)
        padded_modalities[modality] = AnnData(
            X=matrix, obs=pd.DataFrame(index=obs_names.copy()), var=pd.DataFrame(index=var_names.copy())
        )

    no_modality = presence.sum(axis=1) == 0
    if no_modality.any():
        raise ValueError(
            f"{no_modality.sum()} cells have none of the modalities {modalities} (e.g. "
            f"{obs_names[no_modality][:5].tolist()}); subset the MuData to cells with at least one, e.g. "
            "mdata[mdata.obs_names.isin(cells)].copy()"
        )

    registered = MuData(padded_modalities)
    for key in covariate_keys:
        column = mdata.obs[key]
        if column.isna().any():
            raise ValueError(
                f"mdata.obs[{key!r}] has {column.isna().sum()} missing values; covariates must be complete"
            )
        registered.obs[key] = column.astype(str).astype("category").to_numpy()
    if labels_key is not None:
        registered.obs[labels_key] = label_column(mdata.obs[labels_key]).to_numpy()
    registered.obsm[PRESENCE_OBSM_KEY] = presence
    return registered, resolved_likelihoods


def check_setup_arguments(
    mdata: MuData,
    modalities: Sequence[str] | None,
    layers: Mapping[str, str | None] | None,
    likelihoods: Mapping[str, str | None] | None,
    batch_key: str | None,
    labels_key: str | None,
    categorical_covariate_keys: Sequence[str] | None,
) -> tuple[list[str], dict, dict, list[str]]:
    """Check the arguments of :meth:`spvi.SPVI.setup_mudata` against ``mdata`` before touching any data."""
    modalities = resolve_modalities(mdata, modalities)
    layers = _check_keys("layers", layers, modalities)
    likelihoods = _check_keys("likelihoods", likelihoods, modalities)
    covariate_keys = list(categorical_covariate_keys or [])
    if batch_key is not None:
        _categorical_column(mdata, batch_key, "batch_key")
        covariate_keys = [batch_key, *covariate_keys]
    for key in categorical_covariate_keys or []:
        _categorical_column(mdata, key, "categorical_covariate_keys entry")
    if labels_key is not None:
        labels = label_column(_categorical_column(mdata, labels_key, "labels_key"))
        if (labels != UNLABELED_CATEGORY).sum() == 0:
            raise ValueError(f"labels_key {labels_key!r}: no cell has a label (all are NaN or 'unknown')")
    return modalities, layers, likelihoods, covariate_keys
