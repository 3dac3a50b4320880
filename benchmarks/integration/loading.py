"""Data of the integration benchmark: loading, subsampling, the held-out split and the linear transforms.

Two data sets from ``../shared/data``: SNARE-seq mouse motor cortex (``mop``: RNA + ATAC, fully paired) and the
PBMC CITE-seq mosaic (``cite``: RNA + protein; batch p1 RNA only, p2 protein only, p3/p4 paired). Every array
returned over "all cells" follows ``Dataset.mdata.obs_names`` and has ``NaN`` rows for cells that lack the
modality it was computed from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mudata as md
import muon
import numpy as np
import pandas as pd
import scanpy as sc
from cite_seq import counts, held_out_cells, subset
from scipy import sparse
from sklearn.decomposition import TruncatedSVD

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DATA_FILES = {"mop": "mop_snareseq_rna_atac.h5mu", "cite": "pbmc_cite_midas.h5mu"}
#: components of the PCA and LSI baselines
N_COMPONENTS = 30
#: an LSI component whose absolute correlation with the log number of open peaks exceeds this is dropped
DEPTH_CORRELATION = 0.9


@dataclass
class Dataset:
    """A benchmark data set with what the methods need to know about it.

    Attributes
    ----------
    name
        ``"mop"`` or ``"cite"``.
    mdata
        Counts in ``layers["counts"]`` of each modality; ``obs`` has ``cell_type``, ``batch``, ``paired``
        (bool) and ``availability`` (``"paired"``, ``"rna only"``, ``"protein only"``).
    likelihoods
        spvi likelihood of each modality.
    n_private
        spvi private latent size per modality.
    source, target
        Modalities of the cross-modal imputation (target predicted from source).
    notes
        What the preparation did (peaks kept, cells dropped), written to the log.
    """

    name: str
    mdata: md.MuData
    likelihoods: dict[str, str]
    n_private: int
    source: str
    target: str
    notes: list[str] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        """Modality names."""
        return list(self.likelihoods)

    @property
    def groups(self) -> list[str]:
        """Single-modality availability groups present in the data (empty when fully paired)."""
        return sorted(set(self.mdata.obs["availability"]) - {"paired"})


def with_availability(mdata: md.MuData) -> md.MuData:
    """Add ``paired`` and ``availability`` to ``mdata.obs`` from which modalities hold each cell.

    Parameters
    ----------
    mdata
        MuData whose modalities may lack some cells.

    Returns
    -------
    The same MuData.
    """
    present = pd.DataFrame({m: mdata.obs_names.isin(mdata[m].obs_names) for m in mdata.mod}, index=mdata.obs_names)
    mdata.obs["paired"] = present.all(axis=1)
    mdata.obs["availability"] = [
        "paired" if row.all() else " + ".join(present.columns[row]) + " only" for row in present.to_numpy()
    ]
    return mdata


def cell_subset(mdata: md.MuData, names) -> md.MuData:
    """MuData of the given cells (``cite_seq.subset``: each modality keeps the cells it measured), annotated.

    Parameters
    ----------
    mdata
        Full MuData with ``batch`` and ``cell_type`` in ``obs``.
    names
        Cell names to keep.

    Returns
    -------
    A new MuData with ``batch``, ``cell_type``, ``paired`` and ``availability`` in ``obs``.
    """
    return with_availability(subset(mdata, names))


def subsample(mdata: md.MuData, n_cells: int | None, seed: int = 0) -> md.MuData:
    """A random subset of ``n_cells`` cells (all cells when ``None`` or more than there are).

    Parameters
    ----------
    mdata
        MuData to subsample.
    n_cells
        Number of cells to keep.
    seed
        Seed of the ``numpy`` generator.

    Returns
    -------
    The annotated subset (:func:`cell_subset`).
    """
    names = mdata.obs_names
    if n_cells is not None and n_cells < len(names):
        names = np.sort(np.random.default_rng(seed).choice(names, size=n_cells, replace=False))
    return cell_subset(mdata, names)


def load_mop(path: Path, min_peak_frac: float, n_cells: int | None = None) -> Dataset:
    """SNARE-seq RNA + ATAC with the peaks open in at least ``min_peak_frac`` of the nuclei.

    Nuclei left without any open peak (or RNA count) after the filter are dropped.

    Parameters
    ----------
    path
        The ``.h5mu`` file.
    min_peak_frac
        Minimum fraction of nuclei in which a peak is open (count > 0).
    n_cells
        Subsample to this many nuclei first (``--smoke``).

    Returns
    -------
    The data set (imputation: RNA from ATAC).
    """
    mdata = subsample(md.read_h5mu(path), n_cells)
    open_fraction = np.asarray((mdata["atac"].layers["counts"] > 0).mean(axis=0)).ravel()
    atac = mdata["atac"][:, open_fraction >= min_peak_frac].copy()
    has_counts = (_row_sums(atac.layers["counts"]) > 0) & (_row_sums(mdata["rna"].layers["counts"]) > 0)
    filtered = md.MuData({"rna": mdata["rna"], "atac": atac})
    filtered.obs[["batch", "cell_type"]] = mdata.obs[["batch", "cell_type"]]
    filtered = cell_subset(filtered, filtered.obs_names[has_counts])
    notes = [
        f"mop: kept {atac.n_vars} of {mdata['atac'].n_vars} peaks open in >= {min_peak_frac:.1%} of nuclei; "
        f"dropped {int((~has_counts).sum())} nuclei without counts after the filter; {filtered.n_obs} nuclei"
    ]
    likelihoods = {"rna": "nb", "atac": "bernoulli"}
    return Dataset("mop", filtered, likelihoods, n_private=10, source="atac", target="rna", notes=notes)


def load_cite(path: Path, n_cells: int | None = None) -> Dataset:
    """The PBMC CITE-seq mosaic (RNA only, protein only and paired cells).

    Parameters
    ----------
    path
        The ``.h5mu`` file.
    n_cells
        Subsample to this many cells first (``--smoke``).

    Returns
    -------
    The data set (imputation: protein from RNA).
    """
    mdata = subsample(md.read_h5mu(path), n_cells)
    notes = [f"cite: {mdata.n_obs} cells, " + ", ".join(f"{n} {g}" for g, n in _group_sizes(mdata).items())]
    likelihoods = {"rna": "nb", "protein": "nbmixture"}
    return Dataset("cite", mdata, likelihoods, n_private=5, source="rna", target="protein", notes=notes)


def split(dataset: Dataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out cells (a random 20% of the paired cells, ``cite_seq.held_out_cells``) and training cells.

    Parameters
    ----------
    dataset
        The data set.
    seed
        Seed of the split.

    Returns
    -------
    Names of the training cells and of the held-out cells.
    """
    test = held_out_cells(dataset.mdata, seed)
    names = dataset.mdata.obs_names
    return np.asarray(names[~names.isin(test)]), test


def log_normalised(mdata: md.MuData, modality: str, names) -> np.ndarray:
    """Counts normalised to 1e4 per cell and ``log1p``-transformed (dense), for the given cells of one modality.

    Parameters
    ----------
    mdata
        The data.
    modality
        Modality name.
    names
        Cells (all must have the modality).

    Returns
    -------
    Cells x features.
    """
    return normalise_rows(counts(mdata, modality, names))


def normalise_rows(values: np.ndarray) -> np.ndarray:
    """Each row scaled to sum 1e4 and ``log1p``-transformed (``sc.pp.normalize_total`` + ``sc.pp.log1p``).

    Parameters
    ----------
    values
        Non-negative counts or expected counts, cells x features.

    Returns
    -------
    Log-normalised values.
    """
    totals = np.maximum(np.asarray(values, dtype=np.float64).sum(axis=1, keepdims=True), 1e-12)
    return np.log1p(values / totals * 1e4)


def over_all_cells(mdata: md.MuData, names, values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (one per cell in ``names``) placed into an all-cells array with ``NaN`` elsewhere.

    Parameters
    ----------
    mdata
        The data (its ``obs_names`` define the rows).
    names
        Cells of ``values``.
    values
        Cells x dimensions.

    Returns
    -------
    ``mdata.n_obs`` x dimensions.
    """
    out = np.full((mdata.n_obs, values.shape[1]), np.nan)
    out[mdata.obs_names.get_indexer(names)] = values
    return out


def rna_pca(mdata: md.MuData) -> np.ndarray:
    """PCA (30 components, ``sc.pp.pca``) of log-normalised RNA, fit on all cells with RNA.

    Parameters
    ----------
    mdata
        The data.

    Returns
    -------
    Principal components over all cells (``NaN`` for cells without RNA).
    """
    names = mdata["rna"].obs_names
    scores = sc.pp.pca(log_normalised(mdata, "rna", names), n_comps=N_COMPONENTS, random_state=0)
    return over_all_cells(mdata, names, scores)


def atac_tfidf(mdata: md.MuData) -> np.ndarray:
    """TF-IDF (``muon.atac.pp.tfidf`` defaults: log TF, log IDF, scale 1e4) of the binarised peaks of all cells.

    Parameters
    ----------
    mdata
        The data (every cell has ATAC).

    Returns
    -------
    Sparse cells x peaks matrix.
    """
    binary = (mdata["atac"].layers["counts"] > 0).astype(np.float32)
    adata = sc.AnnData(sparse.csr_matrix(binary))
    muon.atac.pp.tfidf(adata)
    return sparse.csr_matrix(adata.X)


def atac_lsi(mdata: md.MuData) -> tuple[np.ndarray, str]:
    """LSI: truncated SVD of the ATAC TF-IDF, 30 components, without the depth component.

    31 components are computed; if the first correlates with the log number of open peaks per cell with
    ``|r| > 0.9`` it is dropped (it encodes sequencing depth), else the 31st is.

    Parameters
    ----------
    mdata
        The data (every cell has ATAC).

    Returns
    -------
    The components over all cells and a note on what was dropped.
    """
    svd = TruncatedSVD(n_components=N_COMPONENTS + 1, random_state=0)
    components = svd.fit_transform(atac_tfidf(mdata))
    depth = np.log(_row_sums(mdata["atac"].layers["counts"] > 0))
    r = abs(float(np.corrcoef(components[:, 0], depth)[0, 1]))
    if r > DEPTH_CORRELATION:
        return components[:, 1:], f"LSI: first component dropped (|r| with log open peaks = {r:.2f})"
    return components[:, :N_COMPONENTS], f"LSI: first component kept (|r| with log open peaks = {r:.2f})"


def unit_variance_concat(*blocks: np.ndarray) -> np.ndarray:
    """Concatenate embeddings after scaling each to unit total variance (sum of its columns' variances).

    Parameters
    ----------
    *blocks
        Embeddings of the same cells.

    Returns
    -------
    The concatenation.
    """
    return np.hstack([b / np.sqrt(np.nansum(np.nanvar(b, axis=0))) for b in blocks])


def _row_sums(x) -> np.ndarray:
    return np.asarray(x.sum(axis=1)).ravel()


def _group_sizes(mdata: md.MuData) -> dict[str, int]:
    return mdata.obs["availability"].value_counts().to_dict()
