"""Simulated single-cell count data for the speed and scaling benchmarks (sparse CSR, realistic sparsity).

RNA: ~10% non-zero entries (about 200 detected genes of 2,000 per cell), counts drawn from a low-rank
cell-type structure with NB-like noise. ATAC: ~3% of peaks with fragments per cell. Protein: dense counts
(every antibody has background), as in CITE-seq. Cells of the same type share expression and accessibility
profiles, so the modalities have shared structure.
"""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp


def _sparse_counts(rng: np.random.Generator, profiles: np.ndarray, cell_type: np.ndarray, mean_detected: float):
    """CSR counts: per cell ~Poisson(mean_detected) draws of features from its type's profile."""
    n_cells, n_features = len(cell_type), profiles.shape[1]
    n_draws = rng.poisson(mean_detected, size=n_cells)
    indptr = np.concatenate([[0], np.cumsum(n_draws)])
    indices = np.empty(indptr[-1], dtype=np.int32)
    for t in range(profiles.shape[0]):
        cells = np.flatnonzero(cell_type == t)
        n_type_draws = n_draws[cells].sum()
        draws = rng.choice(n_features, size=n_type_draws, p=profiles[t]).astype(np.int32)
        # scatter this type's draws into its cells' row segments
        positions = np.concatenate([np.arange(indptr[c], indptr[c + 1]) for c in cells]) if len(cells) else []
        indices[positions] = draws
    data = np.ones(len(indices), dtype=np.float32)
    counts = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_features))
    counts.sum_duplicates()  # repeated draws of a feature add up to its count
    return counts


def _profiles(rng: np.random.Generator, n_types: int, n_features: int) -> np.ndarray:
    base = rng.lognormal(0.0, 1.5, size=n_features)
    profiles = base * rng.lognormal(0.0, 1.0, size=(n_types, n_features))
    return profiles / profiles.sum(axis=1, keepdims=True)


def _anndata(counts, obs: pd.DataFrame, prefix: str) -> ad.AnnData:
    var = pd.DataFrame(index=[f"{prefix}{j}" for j in range(counts.shape[1])])
    return ad.AnnData(counts, obs=obs, var=var)


def simulate_rna_atac(n_cells: int, n_genes: int = 2000, n_peaks: int = 20000, seed: int = 0) -> md.MuData:
    """Paired RNA + ATAC counts (10x Multiome-like), sparse CSR float32 in ``.X``."""
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, 10, size=n_cells)
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_type.astype(str))}, index=[f"cell{i}" for i in range(n_cells)])
    rna = _sparse_counts(rng, _profiles(rng, 10, n_genes), cell_type, mean_detected=0.12 * n_genes)
    atac = _sparse_counts(rng, _profiles(rng, 10, n_peaks), cell_type, mean_detected=0.03 * n_peaks)
    mdata = md.MuData({"rna": _anndata(rna, obs, "gene"), "atac": _anndata(atac, obs, "peak")})
    mdata.obs["cell_type"] = obs["cell_type"]
    return mdata


def simulate_rna_protein(n_cells: int, n_genes: int = 2000, n_proteins: int = 100, seed: int = 0) -> md.MuData:
    """Paired RNA + protein counts (CITE-seq-like); RNA sparse CSR, protein dense with background counts."""
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, 10, size=n_cells)
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_type.astype(str))}, index=[f"cell{i}" for i in range(n_cells)])
    rna = _sparse_counts(rng, _profiles(rng, 10, n_genes), cell_type, mean_detected=0.12 * n_genes)
    foreground = rng.lognormal(3.0, 1.0, size=(10, n_proteins)) * (rng.random((10, n_proteins)) < 0.3)
    background = rng.lognormal(2.0, 0.5, size=n_proteins)
    protein = rng.negative_binomial(5, 5 / (5 + foreground[cell_type] + background)).astype(np.float32)
    mdata = md.MuData({"rna": _anndata(rna, obs, "gene"), "protein": _anndata(protein, obs, "protein")})
    mdata.obs["cell_type"] = obs["cell_type"]
    return mdata
