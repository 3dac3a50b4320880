"""Validation of a user's MuData and the internal, padded copy that scvi-tools registers.

scvi-tools' ``AnnDataManager`` only accepts fully paired MuData. spvi therefore never registers the
user's object: it builds a new MuData with the same cells in the same order, one AnnData per selected
modality, cells that lack a modality padded with zero rows, and an explicit presence mask in
``.obsm`` that the model uses to drop every term that involves a missing modality. The user's MuData
is only read. Modalities that already cover every cell in order are referenced, not copied.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset
from mudata import MuData

from spvi._constants import PRESENCE_OBSM_KEY, UNLABELED_CATEGORY
from spvi._likelihoods import LIKELIHOODS
from spvi._logging import no_pull_on_update, warn

_UNLABELED_VALUES = ("unknown", "nan", "None", "")


def _describe(modality: str, layer: str | None) -> str:
    return f"modality {modality!r}, " + (f"layer {layer!r}" if layer is not None else ".X")


def data_argument(mdata: MuData | None, adata: MuData | None) -> MuData | None:
    """The data passed as ``mdata=`` or as its scvi-tools alias ``adata=`` (not both)."""
    if adata is None:
        return mdata
    if mdata is not None:
        raise TypeError("pass the data as mdata= or as adata= (its alias), not both")
    return adata


def resolve_modalities(mdata: MuData, modalities: Sequence[str] | None, allow_missing: bool = False) -> list[str]:
    """The modalities to model, checked to exist in ``mdata`` (unless ``allow_missing``: new data for a model)."""
    if not isinstance(mdata, MuData):
        raise TypeError(f"spvi needs a MuData object, got {type(mdata).__name__}")
    available = list(mdata.mod)
    modalities = available if modalities is None else list(modalities)
    if isinstance(modalities, str) or len(modalities) < 2:
        raise ValueError(f"modalities must name at least two modalities of the MuData, got {modalities!r}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities contains duplicates: {modalities!r}")
    missing = [m for m in modalities if m not in mdata.mod]
    if missing and not allow_missing:
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


#: Entries read at a time when checking a matrix, so that on-disk (backed) data is never loaded whole.
BLOCK_ENTRIES = 2**24


def is_on_disk(matrix) -> bool:
    """Whether ``matrix`` is a backed (on-disk) array of an AnnData opened with ``backed="r"``."""
    return isinstance(matrix, h5py.Dataset | CSRDataset | CSCDataset)


def row_blocks(matrix) -> Iterator:
    """Consecutive blocks of rows of ``matrix`` as in-memory arrays (sparse blocks stay sparse)."""
    chunk_rows = max(1, BLOCK_ENTRIES // max(matrix.shape[1], 1))
    for start in range(0, matrix.shape[0], chunk_rows):
        yield matrix[start : start + chunk_rows]


def row_sums(matrix) -> np.ndarray:
    """Sum of each row (NaN ignored), read block by block."""
    sums = [
        np.asarray(block.sum(axis=1) if sp.issparse(block) else np.nansum(block, axis=1)).ravel()
        for block in row_blocks(matrix)
    ]
    return np.concatenate(sums) if sums else np.zeros(0)


def column_mean_and_scale(matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each column over the rows where ``rows`` is true, ``NaN`` ignored.

    Read block by block. A column with fewer than two values or (numerically) no variance gets scale 1.
    """
    total = np.zeros(matrix.shape[1])
    total_of_squares = np.zeros(matrix.shape[1])
    count = np.zeros(matrix.shape[1])
    start = 0
    for block in row_blocks(matrix):
        selected = rows[start : start + block.shape[0]]
        start += block.shape[0]
        values = np.asarray(block[selected].toarray() if sp.issparse(block) else block[selected], dtype=np.float64)
        total += np.nansum(values, axis=0)
        total_of_squares += np.nansum(values**2, axis=0)
        count += (~np.isnan(values)).sum(axis=0)
    mean = total / np.maximum(count, 1)
    variance = total_of_squares / np.maximum(count, 1) - mean**2
    scale = np.sqrt(np.maximum(variance, 0.0) * count / np.maximum(count - 1, 1))
    usable = (count >= 2) & (scale > 1e-8 * np.maximum(np.abs(mean), 1.0))
    return mean, np.where(usable, scale, 1.0)


class SortedRowsDataset(h5py.Dataset):
    """A dense on-disk matrix that also accepts unsorted or repeated row indices.

    h5py reads only increasing row indices, while the data loaders ask for the rows of random
    minibatches; this reads the sorted unique rows and returns them in the order asked for.
    """

    def __init__(self, dataset: h5py.Dataset):
        super().__init__(dataset.id)

    def __getitem__(self, key):
        if isinstance(key, list | np.ndarray):
            rows = np.asarray(key)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows
            unique_rows, inverse = np.unique(rows, return_inverse=True)
            return super().__getitem__(unique_rows)[inverse]
        return super().__getitem__(key)


def _in_memory(matrix, why: str):
    """``matrix`` loaded into memory (CSR if sparse), with a warning when it was on disk."""
    if not is_on_disk(matrix):
        return matrix
    warn(f"{why}: loading it into memory")
    return sp.csr_matrix(matrix[:]) if isinstance(matrix, CSRDataset | CSCDataset) else np.asarray(matrix[:])


def _registrable(matrix, where: str):
    """``matrix`` in a form scvi-tools' data loaders read row by row without loading it whole."""
    if isinstance(matrix, CSCDataset):
        raise ValueError(
            f"{where} is an on-disk CSC matrix, which cannot be read by rows efficiently; write it as CSR "
            "(adata.X = scipy.sparse.csr_matrix(adata.X) before saving) or load it into memory"
        )
    if isinstance(matrix, h5py.Dataset):
        return SortedRowsDataset(matrix)
    if sp.issparse(matrix) and not (isinstance(matrix, sp.spmatrix) and matrix.format == "csr"):
        return sp.csr_matrix(matrix)  # scvi-tools reads CSR matrices (not sparse arrays) and slices rows
    return matrix


class _MatrixSummary:
    """What the checks need to know about a matrix, accumulated over blocks of rows."""

    def __init__(self, n_vars: int):
        self.has_inf = self.has_nan = self.has_negative = self.has_non_integer = False
        self.dtype: np.dtype | None = None
        self.column_sum = np.zeros(n_vars)
        self.column_sum_of_squares = np.zeros(n_vars)
        self.column_count = np.zeros(n_vars)

    def add(self, block) -> None:
        values = np.asarray(block.data) if sp.issparse(block) else np.asarray(block)  # stored values
        self.dtype = values.dtype
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            return
        finite = np.isfinite(values)
        self.has_inf |= bool(np.isinf(values).any())
        self.has_nan |= bool(np.isnan(values).any())
        self.has_negative |= bool((values < 0).any())
        self.has_non_integer |= bool((np.mod(values[finite], 1) != 0).any())
        if sp.issparse(block):
            block = sp.csr_matrix(block, dtype=np.float64)
            self.column_sum += np.asarray(block.sum(axis=0)).ravel()
            self.column_sum_of_squares += np.asarray(block.multiply(block).sum(axis=0)).ravel()
            self.column_count += block.shape[0]
        else:
            block = np.where(finite, values, np.nan).astype(np.float64, copy=False)
            self.column_sum += np.nansum(block, axis=0)
            self.column_sum_of_squares += np.nansum(block**2, axis=0)
            self.column_count += (~np.isnan(block)).sum(axis=0)

    @property
    def is_count_data(self) -> bool:
        return not (self.has_inf or self.has_nan or self.has_negative or self.has_non_integer)

    def constant_features(self) -> np.ndarray:
        """Indices of features with zero variance over their measured entries."""
        count = np.maximum(self.column_count, 1)
        mean = self.column_sum / count
        variance = self.column_sum_of_squares / count - mean**2
        scale = np.maximum(self.column_sum_of_squares / count, 1e-300)
        return np.flatnonzero(~(variance > 1e-12 * scale))


def check_matrix(
    matrix, modality: str, layer: str | None, likelihood: str | None, var_names: pd.Index | None = None
) -> str:
    """Check one modality's data for its likelihood; return the likelihood (chosen from the data if ``None``).

    Integer counts default to ``"nb"``, anything else to ``"gaussian"``. ``inf`` is always an error;
    ``NaN`` is allowed only under ``"gaussian"`` (it marks entries that were not measured). The matrix is
    read in blocks of rows, so on-disk (backed) data is checked without loading it whole. With ``var_names``,
    constant features are reported by name in a warning (only when a model is first set up: not again for
    new data or a loaded model).
    """
    where = _describe(modality, layer)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {matrix.shape})")
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray) or is_on_disk(matrix)):
        raise TypeError(f"{where} must be a numpy array or scipy sparse matrix, got {type(matrix).__name__}")
    summary = _MatrixSummary(matrix.shape[1])
    for block in row_blocks(matrix):
        summary.add(block)
    if not np.issubdtype(summary.dtype, np.number) or np.issubdtype(summary.dtype, np.complexfloating):
        raise TypeError(f"{where} must hold real numbers, got dtype {summary.dtype}")
    if summary.has_inf:
        raise ValueError(f"{where} contains inf values; spvi needs finite data")
    if likelihood is None:
        likelihood = "nb" if summary.is_count_data else "gaussian"
    if likelihood not in LIKELIHOODS:
        raise ValueError(
            f"likelihood {likelihood!r} for modality {modality!r} is unknown; choose one of {list(LIKELIHOODS)}"
        )
    if LIKELIHOODS[likelihood].is_count:
        if summary.has_nan:
            raise ValueError(
                f"{where} contains NaN, but likelihood {likelihood!r} needs complete counts "
                "(NaN means 'not measured' only for likelihood 'gaussian')"
            )
        if summary.has_negative:
            raise ValueError(f"{where} contains negative values, but likelihood {likelihood!r} needs counts >= 0")
        if summary.has_non_integer:
            raise ValueError(
                f"{where} contains non-integer values, but likelihood {likelihood!r} needs integer counts; "
                "use the raw counts layer or likelihood 'gaussian' for normalised data"
            )
    constant = summary.constant_features()
    if constant.size and var_names is not None:
        names = var_names[constant[:5]].tolist()
        warn(
            f"{where} has {constant.size} constant features (zero variance), e.g. {names}; they carry no "
            "information and could be removed"
        )
    return likelihood


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
    matrix = _in_memory(matrix, f"modality {modality!r} is on disk and its features need reordering")
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
        Feature names per modality that a trained model expects (new data for the model); columns are
        reordered to match, and a modality that ``mdata`` lacks (or that has no cells) is added with all its
        cells marked absent.

    Returns
    -------
    The padded MuData and the likelihood of each modality.
    """
    _check_unique(mdata.obs_names, "mdata.obs_names (cell names)")
    obs_names = mdata.obs_names
    presence = np.zeros((mdata.n_obs, len(modalities)), dtype=np.float32)
    padded_modalities, resolved_likelihoods = {}, {}
    for m, modality in enumerate(modalities):
        absent = modality not in mdata.mod or mdata.mod[modality].n_obs == 0
        if feature_order is not None and absent:  # new data for a model: a modality none of its cells has
            n_features = len(feature_order[modality])
            matrix = sp.csr_matrix((mdata.n_obs, n_features), dtype=np.float32)
            padded_modalities[modality] = AnnData(
                X=matrix, obs=pd.DataFrame(index=obs_names.copy()), var=pd.DataFrame(index=feature_order[modality])
            )
            resolved_likelihoods[modality] = likelihoods[modality]
            continue
        adata = mdata.mod[modality]
        layer = layers.get(modality)
        _check_unique(adata.obs_names, f"obs_names of modality {modality!r}")
        _check_unique(adata.var_names, f"var_names of modality {modality!r}")
        matrix = _registrable(layer_matrix(adata, modality, layer), _describe(modality, layer))
        resolved_likelihoods[modality] = check_matrix(
            matrix, modality, layer, likelihoods.get(modality), adata.var_names if feature_order is None else None
        )
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
            matrix = _in_memory(matrix, f"modality {modality!r} is on disk and lacks some cells (padding needs it)")
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

    with no_pull_on_update():
        registered = MuData(padded_modalities)
    for key in covariate_keys:
        column = mdata.obs[key]
        if column.isna().any():
            raise ValueError(
                f"mdata.obs[{key!r}] has {column.isna().sum()} missing values; covariates must be complete"
            )
        registered.obs[key] = column.astype(str).astype("category").to_numpy()
    if labels_key is not None:  # new data for a model may have no labels: all cells unlabelled
        labels = mdata.obs[labels_key] if labels_key in mdata.obs.columns else pd.Series(np.nan, index=obs_names)
        registered.obs[labels_key] = label_column(labels).to_numpy()
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
    allow_missing_modalities: bool = False,
) -> tuple[list[str], dict, dict, list[str]]:
    """Check the arguments of :meth:`spvi.SPVI.setup_mudata` against ``mdata`` before touching any data.

    ``allow_missing_modalities`` (new data for a trained model): modalities may be absent, and the labels
    column may be absent or have no label.
    """
    modalities = resolve_modalities(mdata, modalities, allow_missing_modalities)
    layers = _check_keys("layers", layers, modalities)
    likelihoods = _check_keys("likelihoods", likelihoods, modalities)
    covariate_keys = list(categorical_covariate_keys or [])
    if batch_key is not None:
        _categorical_column(mdata, batch_key, "batch_key")
        covariate_keys = [batch_key, *covariate_keys]
    for key in categorical_covariate_keys or []:
        _categorical_column(mdata, key, "categorical_covariate_keys entry")
    if labels_key is not None and not (allow_missing_modalities and labels_key not in mdata.obs.columns):
        labels = label_column(_categorical_column(mdata, labels_key, "labels_key"))
        if (labels != UNLABELED_CATEGORY).sum() == 0 and not allow_missing_modalities:
            raise ValueError(f"labels_key {labels_key!r}: no cell has a label (all are NaN or 'unknown')")
    return modalities, layers, likelihoods, covariate_keys
