"""Methods of the integration benchmark: each fit returns its embedding blocks and its imputation.

Models (spvi, MULTIVI, TOTALVI, MOFA+) are trained on the training cells only and then embed every cell of the
data set; the unsupervised transforms (PCA, LSI) are fit on all cells. Imputations are of the held-out cells'
target modality from their source modality, on the scale of :func:`observed_target`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mudata as md
import numpy as np
import scvi
from baselines import fit_mofa, ridge_predict
from cite_seq import RNA_ONLY_BATCH, counts, totalvi_mudata, totalvi_protein, train_totalvi
from loading import (
    Dataset,
    atac_lsi,
    atac_tfidf,
    cell_subset,
    log_normalised,
    normalise_rows,
    over_all_cells,
    rna_pca,
    unit_variance_concat,
)
from scipy import sparse

import spvi

#: dimension of spvi's z_shared
N_SHARED = 10
#: minibatch size of spvi (TOTALVI in cite_seq.train_totalvi and MULTIVI by default use the same)
BATCH_SIZE = 128
#: quiet Lightning trainer
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@dataclass
class Fit:
    """One fitted method.

    Attributes
    ----------
    method
        Name in the result table (``"spvi mmvae++"``, ``"multivi"``, ``"pca"``, ...).
    blocks
        Embedding blocks over all cells (``NaN`` rows for cells not embedded), e.g. ``shared``,
        ``private_rna``, ``all``.
    main_block
        The block shown in the UMAP figure.
    imputed
        Held-out cells x target features on the scale of :func:`observed_target`, or ``None``.
    seconds
        Wall time of the fit (training only, not embedding or imputation).
    epochs
        Epochs trained (``model.trainer.current_epoch``; ``None`` for non-iterative methods).
    notes
        Remarks written into the ``note`` column.
    """

    method: str
    blocks: dict[str, np.ndarray]
    main_block: str = "all"
    imputed: np.ndarray | None = None
    seconds: float = float("nan")
    epochs: int | None = None
    notes: list[str] = field(default_factory=list)


def observed_target(dataset: Dataset, test) -> np.ndarray:
    """Observed target modality of the held-out cells: log-normalised RNA (mop) or ``log1p`` protein (cite).

    Parameters
    ----------
    dataset
        The data set.
    test
        Held-out cell names.

    Returns
    -------
    Held-out cells x target features.
    """
    return to_target_scale(dataset, counts(dataset.mdata, dataset.target, test))


def to_target_scale(dataset: Dataset, values: np.ndarray) -> np.ndarray:
    """Expected counts of the target on the scale of :func:`observed_target`.

    Parameters
    ----------
    dataset
        The data set.
    values
        Cells x target features (counts or expected counts; for RNA any per-cell scale).

    Returns
    -------
    Log-normalised RNA (each cell scaled to 1e4, ``log1p``) or ``log1p`` protein.
    """
    return normalise_rows(values) if dataset.target == "rna" else np.log1p(values)


def positions(dataset: Dataset, names) -> np.ndarray:
    """Positions of cells in ``dataset.mdata``."""
    return dataset.mdata.obs_names.get_indexer(names)


def fit_spvi(dataset: Dataset, objective: str, seed: int, train, test, epochs: int, model_kwargs, train_kwargs) -> Fit:
    """spvi with one objective, trained on the training cells, embedding all cells.

    Parameters
    ----------
    dataset
        The data set.
    objective
        spvi objective.
    seed
        ``scvi.settings.seed`` before the model is built.
    train, test
        Training and held-out cell names.
    epochs
        Training epochs.
    model_kwargs
        Extra arguments of :class:`spvi.SPVI`.
    train_kwargs
        Extra arguments of :meth:`spvi.SPVI.train`; they override ``max_epochs``, ``batch_size=128`` and
        ``train_size=1.0``.

    Returns
    -------
    Blocks ``shared``, ``private_<modality>`` and ``all``; imputation of the target from the source.
    """
    train_data = cell_subset(dataset.mdata, train)
    spvi.SPVI.setup_mudata(
        train_data,
        modalities=dataset.modalities,
        layers=dict.fromkeys(dataset.modalities, "counts"),
        likelihoods=dataset.likelihoods,
        batch_key="batch",
    )
    scvi.settings.seed = seed
    model = spvi.SPVI(train_data, n_shared=N_SHARED, n_private=dataset.n_private, objective=objective, **model_kwargs)
    start = time.perf_counter()
    model.train(**{"max_epochs": epochs, "batch_size": BATCH_SIZE, "train_size": 1.0, **QUIET, **train_kwargs})
    seconds = time.perf_counter() - start
    full = dataset.mdata.copy()
    blocks = {"shared": model.get_latent_representation(full, kind="shared")}
    for modality in dataset.modalities:
        blocks[f"private_{modality}"] = model.get_latent_representation(full, kind="private", modality=modality)
    blocks["all"] = model.get_latent_representation(full, kind="all")
    predicted = model.predict(
        source=dataset.source, target=dataset.target, mdata=full, indices=positions(dataset, test), return_numpy=True
    )
    imputed = to_target_scale(dataset, predicted)
    return Fit(f"spvi {objective}", blocks, "shared", imputed, seconds, model.trainer.current_epoch)


def fit_multivi(dataset: Dataset, seed: int, train, test, epochs: int, n_latent: int | None) -> Fit:
    """scvi-tools MULTIVI on RNA + ATAC counts, trained on the training cells, embedding all cells.

    MULTIVI's defaults (lr 1e-4, AdamW, KL warm-up over 50 epochs, adversarial mixing, batch 128, ``n_latent``
    = sqrt of its hidden width) except: a fixed number of epochs on all training cells (``train_size=1``, no
    early stopping), as for spvi. RNA from ATAC: the held-out cells' RNA counts are set to 0, which MULTIVI
    reads as missing RNA, so their latent comes from the ATAC encoder alone; the decoded expression
    frequencies (``get_normalized_expression``) are log-normalised.

    Parameters
    ----------
    dataset
        The mop data set.
    seed
        ``scvi.settings.seed`` before the model is built.
    train, test
        Training and held-out cell names.
    epochs
        Training epochs.
    n_latent
        Latent size (``None``: MULTIVI's default).

    Returns
    -------
    Block ``all`` (the joint latent) and the imputation of RNA from ATAC.
    """
    train_data = cell_subset(dataset.mdata, train)
    _setup_multivi(train_data)
    scvi.settings.seed = seed
    model = scvi.model.MULTIVI(train_data, n_latent=n_latent)
    start = time.perf_counter()
    model.train(max_epochs=epochs, train_size=1.0, early_stopping=False, **QUIET)
    seconds = time.perf_counter() - start
    full, masked = dataset.mdata.copy(), _without_rna(dataset.mdata, test)
    for mdata in (full, masked):
        _setup_multivi(mdata)  # new data are set up like the training data; the model transfers its registry
    latent = model.get_latent_representation(full)
    frequencies = model.get_normalized_expression(masked, indices=positions(dataset, test), return_numpy=True)
    name = "multivi" if n_latent is None else f"multivi n_latent={n_latent}"
    notes = [f"n_latent={model.module.n_latent}"]
    return Fit(name, {"all": latent}, "all", normalise_rows(frequencies), seconds, model.trainer.current_epoch, notes)


def _setup_multivi(mdata: md.MuData) -> None:
    scvi.model.MULTIVI.setup_mudata(
        mdata,
        rna_layer="counts",
        atac_layer="counts",
        batch_key="batch",
        modalities={"rna_layer": "rna", "atac_layer": "atac"},
    )


def _without_rna(mdata: md.MuData, names) -> md.MuData:
    """A copy of ``mdata`` with the RNA counts of the given cells set to 0."""
    masked = mdata.copy()
    keep = (~masked["rna"].obs_names.isin(names)).astype(np.float32)
    masked["rna"].layers["counts"] = sparse.diags(keep) @ sparse.csr_matrix(masked["rna"].layers["counts"])
    return masked


def fit_totalvi(dataset: Dataset, seed: int, train, test, epochs: int) -> Fit:
    """scvi-tools TOTALVI as in ``benchmarks/cite_seq.py``, embedding all cells with RNA.

    Trained on the training cells with RNA (the protein-only cells cannot enter; RNA-only cells get an all-zero
    protein matrix, which TOTALVI treats as a batch without protein); ``n_latent`` = spvi's total latent size,
    128 hidden units, batch 128, its default lr, fixed epochs on all training cells. Protein from RNA: the
    held-out cells with protein set to 0 and batch set to the RNA-only batch, expected protein counts in the
    paired batches (``get_normalized_expression``), ``log1p``.

    Parameters
    ----------
    dataset
        The cite data set.
    seed
        ``scvi.settings.seed`` before the model is built.
    train, test
        Training and held-out cell names.
    epochs
        Training epochs.

    Returns
    -------
    Block ``all`` (``NaN`` for protein-only cells) and the imputation of protein from RNA.
    """
    mdata = dataset.mdata
    n_latent = N_SHARED + 2 * dataset.n_private
    model, seconds = train_totalvi(totalvi_mudata(mdata, train), seed, n_latent, 128, epochs)
    with_rna = totalvi_mudata(mdata, mdata.obs_names)
    latent = over_all_cells(mdata, with_rna.obs_names, model.get_latent_representation(with_rna))
    protein = totalvi_protein(model, totalvi_mudata(mdata, test, zero_protein=True, batch=RNA_ONLY_BATCH))
    return Fit("totalvi", {"all": latent}, "all", np.log1p(protein), seconds, model.trainer.current_epoch)


def fit_linear(dataset: Dataset, seed: int, train, test, mofa: dict | None) -> list[Fit]:
    """The linear baselines: PCA of RNA, and for RNA + ATAC also LSI, PCA+LSI, MOFA+; ridge imputation.

    Parameters
    ----------
    dataset
        The data set.
    seed
        Seed of MOFA+.
    train, test
        Training and held-out cell names.
    mofa
        ``{"n_factors": ..., "iterations": ...}`` for MOFA+, or ``None`` to skip it (always skipped for cite).

    Returns
    -------
    One :class:`Fit` per baseline; ``ridge`` has no embedding, only the imputation.
    """
    start = time.perf_counter()
    pca = rna_pca(dataset.mdata)
    fits = [Fit("pca", {"all": pca}, seconds=time.perf_counter() - start)]
    if dataset.name == "cite":
        return [*fits, fit_ridge(dataset, pca, train, test, "RNA PCs")]
    start = time.perf_counter()
    lsi, note = atac_lsi(dataset.mdata)
    fits.append(Fit("lsi", {"all": lsi}, seconds=time.perf_counter() - start, notes=[note]))
    concat = Fit("pca+lsi", {"all": unit_variance_concat(pca, lsi)}, seconds=sum(f.seconds for f in fits))
    fits.append(concat)
    if mofa is not None:
        fits.append(fit_mofa_views(dataset, seed, train, test, **mofa))
    return [*fits, fit_ridge(dataset, lsi, train, test, "ATAC LSI")]


def fit_ridge(dataset: Dataset, features: np.ndarray, train, test, what: str) -> Fit:
    """Ridge regression (``baselines.ridge_predict``) of the target on an embedding of the source.

    Fit on the training cells that have both modalities.

    Parameters
    ----------
    dataset
        The data set.
    features
        Source embedding over all cells (LSI of ATAC for mop, RNA PCs for cite).
    train, test
        Training and held-out cell names.
    what
        Name of the source embedding, for the note.

    Returns
    -------
    A :class:`Fit` with the imputation only.
    """
    mdata = dataset.mdata
    paired_train = np.asarray(train)[mdata.obs.loc[train, "paired"].to_numpy(dtype=bool)]
    start = time.perf_counter()
    predicted = ridge_predict(
        features[positions(dataset, paired_train)],
        observed_target(dataset, paired_train),
        features[positions(dataset, test)],
    )
    seconds = time.perf_counter() - start
    return Fit("ridge", {}, imputed=predicted, seconds=seconds, notes=[f"RidgeCV on {what}"])


def fit_mofa_views(dataset: Dataset, seed: int, train, test, n_factors: int, iterations: int) -> Fit:
    """MOFA+ (``baselines.fit_mofa``) on log-normalised RNA and TF-IDF of binarised ATAC.

    Fit on the training cells; the factors of every cell are inferred from both views
    (``MofaFit.infer_factors``), and RNA of the held-out cells is predicted from factors inferred from ATAC
    alone (``MofaFit.predict``).

    Parameters
    ----------
    dataset
        The mop data set.
    seed
        Seed of MOFA+'s initialisation.
    train, test
        Training and held-out cell names.
    n_factors
        Number of factors.
    iterations
        Maximum number of iterations (convergence mode ``"fast"`` may stop earlier).

    Returns
    -------
    Block ``all`` (the factors) and the imputation of RNA from ATAC.
    """
    mdata = dataset.mdata
    views = [log_normalised(mdata, "rna", mdata.obs_names), atac_tfidf(mdata).toarray()]
    train_rows, test_rows = positions(dataset, train), positions(dataset, test)
    start = time.perf_counter()
    model = fit_mofa(
        [v[train_rows] for v in views], n_factors=n_factors, seed=seed, iterations=iterations, float32=True
    )
    seconds = time.perf_counter() - start
    factors = model.infer_factors(views, [0, 1])
    imputed = model.predict([None, views[1][test_rows]], source=1, target=0)
    note = f"{n_factors} factors, at most {iterations} iterations"
    return Fit("mofa+", {"all": factors}, imputed=imputed, seconds=seconds, notes=[note])
