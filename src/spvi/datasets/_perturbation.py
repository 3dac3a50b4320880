"""A simulated pooled CRISPR screen with guide capture (Perturb-seq, ECCITE-seq) with known effects."""

from collections.abc import Sequence

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd

#: genes in each private programme, as a share of all genes
_PROGRAMME_SHARE = 0.1
#: range of the absolute log-fold loading of a programme gene
_LOADING_RANGE = (0.5, 1.5)
#: sd of the genes' baseline log expression; median library size and its log-scale sd across cells
_BASELINE_SD = 1.0
_LIBRARY_MEDIAN = 3000.0
_LIBRARY_LOG_SD = 0.4
#: sd of the log-fold shift of each gene in each replicate and of each replicate's library size
_REPLICATE_SD = 0.1
#: NB inverse dispersion of the RNA: median and log-scale sd across genes
_THETA_MEDIAN = 10.0
_THETA_LOG_SD = 0.5
#: NB inverse dispersion of the dominant guide's counts
_GUIDE_THETA = 2.0


def _check_perturbation_arguments(
    n_cells: int,
    n_genes: int,
    n_guides: int,
    n_private_programmes: int,
    non_targeting_fraction: float,
    downstream_size: int,
    n_replicates: int,
    guide_umis: float,
    ambient_umis: float,
) -> int:
    """Validate the arguments of :func:`synthetic_perturbation`; return the number of targeting guides."""
    if n_cells < 2 or n_genes < 2:
        raise ValueError(f"n_cells and n_genes must be at least 2, got {n_cells} and {n_genes}")
    if n_private_programmes < 0:
        raise ValueError(f"n_private_programmes must be >= 0, got {n_private_programmes}")
    if not 0 <= non_targeting_fraction < 1:
        raise ValueError(f"non_targeting_fraction must be in [0, 1), got {non_targeting_fraction}")
    n_non_targeting = max(1, round(non_targeting_fraction * n_guides)) if non_targeting_fraction > 0 else 0
    n_targeting = n_guides - n_non_targeting
    if n_targeting < 1:
        raise ValueError(
            f"n_guides={n_guides} with non_targeting_fraction={non_targeting_fraction} leaves no targeting guide"
        )
    if downstream_size < 0 or n_targeting * (1 + downstream_size) > n_genes:
        raise ValueError(
            f"{n_targeting} targeting guides with a target and {downstream_size} downstream genes each need "
            f"{n_targeting * (1 + downstream_size)} distinct genes, but n_genes={n_genes}"
        )
    if n_replicates < 1:
        raise ValueError(f"n_replicates must be >= 1, got {n_replicates}")
    if guide_umis <= 0 or ambient_umis < 0:
        raise ValueError(f"guide_umis must be > 0 and ambient_umis >= 0, got {guide_umis} and {ambient_umis}")
    return n_targeting


def _programme_activities(n_cells: int, n_programmes: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Per-cell activity of each private programme and the cells' phase and state.

    The first two programmes (when there are two or more) are cell-cycle-like: an S-like and a G2/M-like score
    ``max(0, cos(phase))`` and ``max(0, sin(phase))`` of a phase uniform on the circle. The others are cell
    states: each cell belongs to one state (uniformly), whose programme is active at a level uniform on
    ``[0.5, 1.5]``; a single programme is a state programme.
    """
    activities = np.zeros((n_cells, n_programmes))
    phase = rng.uniform(0.0, 2.0 * np.pi, n_cells)
    n_cycle = 2 if n_programmes >= 2 else 0
    if n_cycle:
        activities[:, 0] = np.maximum(0.0, np.cos(phase))
        activities[:, 1] = np.maximum(0.0, np.sin(phase))
    n_states = n_programmes - n_cycle
    state = rng.integers(0, max(n_states, 1), n_cells)
    if n_states:
        activities[np.arange(n_cells), n_cycle + state] = rng.uniform(0.5, 1.5, n_cells)
    return activities, {"phase": phase if n_cycle else None, "state": state if n_states else None}


def synthetic_perturbation(
    n_cells: int = 3000,
    n_genes: int = 500,
    n_guides: int = 20,
    n_private_programmes: int = 6,
    effect: float | Sequence[float] = 1.0,
    downstream_size: int = 10,
    downstream_effect: float = 0.5,
    non_targeting_fraction: float = 0.2,
    n_replicates: int = 2,
    guide_umis: float = 20.0,
    ambient_umis: float = 4.0,
    seed: int = 0,
) -> md.MuData:
    """Simulate a pooled CRISPR screen: RNA counts with strong private structure and guide counts.

    A sparse, strong shared signal: the guide modality says which gene was knocked down, and that lowers
    the target gene (and a small downstream programme) among genes whose variation is private to RNA.

    **Guides.** ``n_guides`` guides, of which ``round(non_targeting_fraction * n_guides)`` (at least one
    when the fraction is positive) are non-targeting controls; each targeting guide has its own target
    gene, drawn among the genes with above-median baseline expression. Every cell carries one guide, drawn
    uniformly. Its guide counts are ``1 + NB(mean guide_umis, inverse dispersion 2)`` for the dominant guide
    plus an ambient background: Poisson counts with ``ambient_umis`` expected UMIs per cell, spread over the
    guides in proportion to their frequency.

    **RNA.** Counts ``NB(library * softmax(eta), theta_g)`` with the cell's log expression

    ``eta = baseline + replicate shift + sum_k activity_k * loading_k + perturbation effect``:

    - ``baseline ~ N(0, 1)`` per gene; ``theta_g`` log-normal around 10 (sd 0.5 on the log scale);
    - ``n_private_programmes`` private programmes: the first two cell-cycle-like (S- and G2/M-like scores
      of a phase uniform on the circle), the others cell states (each cell in one state, its programme active
      at a level uniform on ``[0.5, 1.5]``); each programme loads 10% of the genes, drawn at random, with
      log-fold loadings of random sign and size uniform on ``[0.5, 1.5]``;
    - ``n_replicates`` replicates (``obs["replicate"]``, the batch), cells assigned uniformly; each shifts
      every gene's log expression by ``N(0, 0.1)`` and the library size by a log-normal factor (sd 0.1);
    - library size log-normal with median 3000 and log-scale sd 0.4 (times the replicate factor);
    - the perturbation: a targeting guide lowers its target's log expression by its ``effect`` (log units,
      natural log; softmax renormalisation leaves the other genes unchanged up to a factor common to the
      cell) and shifts ``downstream_size`` further genes (distinct from all targets and from each other
      guide's) by ``+-downstream_effect`` (random sign).

    Parameters
    ----------
    n_cells
        Number of cells (all have both modalities).
    n_genes
        Number of genes.
    n_guides
        Number of guides, non-targeting ones included.
    n_private_programmes
        Number of private RNA programmes (cell cycle and cell states; see above).
    effect
        Knock-down of each targeting guide's target in natural-log units: one value for all or one per
        targeting guide.
    downstream_size
        Number of downstream genes per targeting guide (0: none).
    downstream_effect
        Absolute log-fold shift of each downstream gene.
    non_targeting_fraction
        Share of the guides that are non-targeting controls.
    n_replicates
        Number of replicates (batches).
    guide_umis
        Mean count of the dominant guide, beyond a first UMI.
    ambient_umis
        Expected ambient guide UMIs per cell, over all guides.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same data.

    Returns
    -------
    MuData with ``"rna"`` (``n_cells x n_genes``) and ``"guide"`` (``n_cells x n_guides``), both dense
    ``float32`` counts in ``.X``. Truth: ``obs`` has ``"guide"`` (the dominant guide), ``"target"`` (its
    target gene, ``"non-targeting"`` for controls), ``"replicate"``, ``"cell_state"`` and ``"cell_cycle_phase"``
    (where those programmes exist), ``obsm["programme_activity"]`` (cells x programmes); ``mdata["guide"].var``
    has ``"target"``, ``"effect"`` and ``"is_targeting"``; ``mdata["rna"].var`` has ``"baseline"``, ``"theta"``,
    ``"is_target"`` and ``"is_downstream"``, ``mdata["rna"].varm["programme_loading"]`` (genes x programmes),
    ``mdata["rna"].varm["perturbation_effect"]`` (genes x guides: the log-fold change each guide causes,
    target and downstream) and ``mdata["rna"].varm["replicate_shift"]`` (genes x replicates), so that the
    noise-free log expression of every cell is ``baseline + replicate_shift[:, replicate] + programme_loading @
    programme_activity + perturbation_effect[:, guide]``. The arguments and the share of the variance of the
    noise-free log expression ``eta`` explained by the programmes, the perturbations and the replicates are in
    ``uns["synthetic_perturbation"]``.

    Examples
    --------
    >>> mdata = spvi.datasets.synthetic_perturbation(n_cells=500, n_genes=200, n_guides=10, seed=1)
    >>> mdata["guide"].shape
    (500, 10)
    """
    n_targeting = _check_perturbation_arguments(
        n_cells,
        n_genes,
        n_guides,
        n_private_programmes,
        non_targeting_fraction,
        downstream_size,
        n_replicates,
        guide_umis,
        ambient_umis,
    )
    effects = np.asarray(effect, dtype=np.float64)
    if effects.ndim == 0:
        effects = np.full(n_targeting, float(effects))
    elif effects.shape != (n_targeting,):
        raise ValueError(f"effect has {effects.size} values but there are {n_targeting} targeting guides")
    rng = np.random.default_rng(seed)
    gene_names = pd.Index([f"gene_{j}" for j in range(n_genes)])
    obs_names = pd.Index([f"cell_{i}" for i in range(n_cells)])

    # genes: baseline, dispersion, private programmes
    baseline = rng.normal(0.0, _BASELINE_SD, n_genes)
    theta = _THETA_MEDIAN * np.exp(rng.normal(0.0, _THETA_LOG_SD, n_genes))
    loading = np.zeros((n_genes, n_private_programmes))
    programme_size = max(1, round(_PROGRAMME_SHARE * n_genes))
    for k in range(n_private_programmes):
        genes = rng.choice(n_genes, programme_size, replace=False)
        loading[genes, k] = rng.choice([-1.0, 1.0], programme_size) * rng.uniform(*_LOADING_RANGE, programme_size)

    # guides: targets among the expressed genes, downstream genes among the others
    guide_names = [f"NT_{k}" for k in range(n_guides - n_targeting)]
    expressed = np.flatnonzero(baseline > np.median(baseline))
    if len(expressed) < n_targeting:
        raise ValueError(f"{n_targeting} targeting guides need as many expressed genes; increase n_genes")
    targets = rng.choice(expressed, n_targeting, replace=False)
    others = rng.permutation(np.setdiff1d(np.arange(n_genes), targets))
    perturbation = np.zeros((n_genes, n_guides))
    for g in range(n_targeting):
        column = n_guides - n_targeting + g
        perturbation[targets[g], column] = -effects[g]
        downstream = others[g * downstream_size : (g + 1) * downstream_size]
        perturbation[downstream, column] = rng.choice([-1.0, 1.0], downstream_size) * downstream_effect
        guide_names.append(f"{gene_names[targets[g]]}_g")
    is_targeting = np.arange(n_guides) >= n_guides - n_targeting

    # cells
    guide = rng.integers(0, n_guides, n_cells)
    replicate = rng.integers(0, n_replicates, n_cells)
    activity, cell_truth = _programme_activities(n_cells, n_private_programmes, rng)
    replicate_shift = rng.normal(0.0, _REPLICATE_SD, (n_replicates, n_genes))
    replicate_library = np.exp(rng.normal(0.0, _REPLICATE_SD, n_replicates))
    library = _LIBRARY_MEDIAN * np.exp(rng.normal(0.0, _LIBRARY_LOG_SD, n_cells)) * replicate_library[replicate]

    programme_part = activity @ loading.T
    perturbation_part = perturbation.T[guide]
    replicate_part = replicate_shift[replicate]
    eta = baseline + replicate_part + programme_part + perturbation_part
    proportions = np.exp(eta - eta.max(axis=1, keepdims=True))
    proportions /= proportions.sum(axis=1, keepdims=True)
    mean = library[:, None] * proportions
    rna = rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float32)

    guide_counts = rng.poisson(ambient_umis / n_guides, (n_cells, n_guides)).astype(np.float64)
    dominant = 1 + rng.negative_binomial(_GUIDE_THETA, _GUIDE_THETA / (_GUIDE_THETA + guide_umis), n_cells)
    guide_counts[np.arange(n_cells), guide] += dominant

    total_variance = eta.var(axis=0).sum()
    variance_share = {
        name: float(part.var(axis=0).sum() / total_variance)
        for name, part in (
            ("programmes", programme_part),
            ("perturbations", perturbation_part),
            ("replicates", replicate_part),
        )
    }

    obs = pd.DataFrame(index=obs_names)
    obs["guide"] = pd.Categorical(np.asarray(guide_names)[guide], categories=guide_names)
    target_names = np.asarray(["non-targeting"] * (n_guides - n_targeting) + list(gene_names[targets]), dtype=object)
    obs["target"] = pd.Categorical(target_names[guide])
    obs["replicate"] = pd.Categorical(
        [f"rep{r}" for r in replicate], categories=[f"rep{r}" for r in range(n_replicates)]
    )
    if cell_truth["state"] is not None:
        obs["cell_state"] = pd.Categorical([f"state_{s}" for s in cell_truth["state"]])
    if cell_truth["phase"] is not None:
        obs["cell_cycle_phase"] = cell_truth["phase"]

    rna_var = pd.DataFrame(
        {
            "baseline": baseline,
            "theta": theta,
            "is_target": np.isin(np.arange(n_genes), targets),
            "is_downstream": (perturbation != 0).any(axis=1) & ~np.isin(np.arange(n_genes), targets),
        },
        index=gene_names,
    )
    rna_adata = ad.AnnData(X=rna, obs=pd.DataFrame(index=obs_names), var=rna_var)
    programme_names = [f"programme_{k}" for k in range(n_private_programmes)]
    rna_adata.varm["programme_loading"] = pd.DataFrame(loading, index=gene_names, columns=programme_names)
    rna_adata.varm["perturbation_effect"] = pd.DataFrame(perturbation, index=gene_names, columns=guide_names)
    rna_adata.varm["replicate_shift"] = pd.DataFrame(
        replicate_shift.T, index=gene_names, columns=obs["replicate"].cat.categories
    )
    guide_var = pd.DataFrame(
        {
            "target": target_names,
            "effect": np.concatenate([np.zeros(n_guides - n_targeting), effects]),
            "is_targeting": is_targeting,
        },
        index=pd.Index(guide_names),
    )
    guide_adata = ad.AnnData(X=guide_counts.astype(np.float32), obs=pd.DataFrame(index=obs_names), var=guide_var)

    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna_adata, "guide": guide_adata})
    mdata.obs = obs
    mdata.obsm["programme_activity"] = activity
    mdata.uns["synthetic_perturbation"] = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_guides": n_guides,
        "n_private_programmes": n_private_programmes,
        "effect": effects.tolist(),
        "downstream_size": downstream_size,
        "downstream_effect": downstream_effect,
        "non_targeting_fraction": non_targeting_fraction,
        "n_replicates": n_replicates,
        "guide_umis": guide_umis,
        "ambient_umis": ambient_umis,
        "seed": seed,
        "variance_share": variance_share,
    }
    return mdata
