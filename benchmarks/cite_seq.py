"""PBMC CITE-seq mosaic: cell-type structure of the embeddings and protein-from-RNA prediction, spvi vs TOTALVI.

Data: ``../shared/data/pbmc_cite_midas.h5mu`` (counts; batch p1 RNA only, p2 protein only, p3/p4 paired; 1600
cells, 500 genes, 224 proteins, ``cell_type``).

For each seed a random 20% of the 800 paired cells (``numpy`` generator seeded with ``seed``) is held out;
everything is trained on the other cells.

- spvi for each objective: ``nb`` for RNA counts, ``nbmixture`` (totalVI's background/foreground mixture) for
  protein counts, ``batch_key="batch"``, trained on all training cells including the unpaired p1 (RNA) and
  p2 (protein) cells; ``n_shared`` + ``n_private`` per modality, ``n_hidden`` units, batch 128, lr 1e-3.
- scvi-tools TOTALVI (``setup_mudata`` with the rna and protein ``counts`` layers, ``batch_key="batch"``),
  ``n_latent = n_shared + 2 * n_private`` (the total latent size of spvi), ``n_hidden`` units, the same epochs,
  batch 128, its own default lr 4e-3, no early stopping, all training cells used for training. TOTALVI needs
  RNA for every cell, so the 400 protein-only p2 cells cannot be used; the RNA-only p1 cells enter with an
  all-zero protein matrix, which TOTALVI detects as a batch with missing protein.

Metrics on the held-out paired cells:

- kNN accuracy of ``cell_type`` (k=15, ``spvi.metrics.knn_accuracy``; reference = the training cells of that
  embedding: for spvi ``z_shared`` all training cells, for a private block the training cells with that
  modality, for TOTALVI its training cells) and silhouette of cell types (sklearn, Euclidean) on the held-out
  cells. Held-out cells are embedded from all their data (RNA + protein).
- protein from RNA: Pearson r per protein between ``log1p`` observed counts and ``log1p`` predicted expected
  counts, averaged over proteins. spvi: ``model.predict(source="rna", target="protein")`` (``z_shared`` from
  RNA only, protein private block at 0). TOTALVI (``totalvi``): the held-out cells are passed with their protein
  counts set to 0 and their batch set to ``p1_0`` (the RNA-only training batch, so the encoder sees the
  zero-protein input it was trained on for missing protein); the protein prediction is
  ``get_normalized_expression(transform_batch=["p3_0", "p4_0"], include_protein_background=True,
  sample_protein_mixing=False, n_samples=25)`` (expected counts in the paired batches, averaged over them).
  ``totalvi own batch``: the same but keeping the cells' own batch (p3/p4) with zeroed protein. Ridge
  (``RidgeCV``) on ``log1p`` RNA counts -> ``log1p`` protein counts, fit on the paired training cells, is the
  linear reference.

Usage::

    python benchmarks/cite_seq.py --seeds 0 1 2 --epochs 200
    python benchmarks/cite_seq.py --smoke --output /tmp/cite.csv

Rows go to ``benchmarks/results/cite_seq.csv``; summary ``cite_seq_summary.md`` and ``cite_seq.png``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scvi
import torch
from baselines import ridge_predict
from scipy import sparse
from sklearn.metrics import silhouette_score
from summarize_experiments import summarize

import spvi
from spvi.metrics import knn_accuracy, pearson_per_feature

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RNA_ONLY_BATCH = "p1_0"
PAIRED_BATCHES = ["p3_0", "p4_0"]


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)


def counts(mdata: md.MuData, modality: str, names) -> np.ndarray:
    adata = mdata[modality]
    return dense(adata[adata.obs_names.get_indexer(names)].layers["counts"])


def held_out_cells(mdata: md.MuData, seed: int, fraction: float = 0.2) -> np.ndarray:
    """Names of a random ``fraction`` of the paired cells."""
    paired = mdata.obs_names[mdata.obs["paired"].astype(bool).to_numpy()]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(paired, size=round(fraction * len(paired)), replace=False))


def subset(mdata: md.MuData, names) -> md.MuData:
    """MuData of the given cells (each modality keeps only the cells it measured), with batch and cell type."""
    names = pd.Index(names)
    mods = {m: mdata[m][mdata[m].obs_names.isin(names)].copy() for m in mdata.mod}
    with md.set_options(pull_on_update=False):
        out = md.MuData(mods)
    out.obs["batch"] = mdata.obs.loc[out.obs_names, "batch"].astype(str).to_numpy()
    out.obs["cell_type"] = mdata.obs.loc[out.obs_names, "cell_type"].astype(str).to_numpy()
    return out


def totalvi_mudata(mdata: md.MuData, names, zero_protein: bool = False, batch: str | None = None) -> md.MuData:
    """Cells with RNA as a fully aligned rna + protein MuData for TOTALVI (protein 0 where not measured)."""
    names = pd.Index(names)
    names = names[names.isin(mdata["rna"].obs_names)]
    rna = counts(mdata, "rna", names)
    protein = np.zeros((len(names), mdata["protein"].n_vars))
    measured = names.isin(mdata["protein"].obs_names)
    if not zero_protein and measured.any():
        protein[measured] = counts(mdata, "protein", names[measured])
    obs = pd.DataFrame(
        {
            "batch": mdata.obs.loc[names, "batch"].astype(str).to_numpy() if batch is None else batch,
            "cell_type": mdata.obs.loc[names, "cell_type"].astype(str).to_numpy(),
        },
        index=names,
    )
    mods = {
        "rna": ad.AnnData(sparse.csr_matrix(rna, dtype=np.float32), obs=obs.copy(), var=mdata["rna"].var[[]].copy()),
        "protein": ad.AnnData(protein.astype(np.float32), obs=obs.copy(), var=mdata["protein"].var[[]].copy()),
    }
    for a in mods.values():
        a.layers["counts"] = a.X.copy()
    with md.set_options(pull_on_update=False):
        return md.MuData(mods)


def embedding_rows(name, z_train, y_train, z_test, y_test) -> dict:
    keep = ~np.isnan(z_train).any(axis=1)
    return {
        "embedding": name,
        "knn_accuracy": knn_accuracy(z_train[keep], y_train[keep], z_test, y_test, n_neighbors=15),
        "silhouette": float(silhouette_score(z_test, y_test)),
    }


def log1p_pearson(observed: np.ndarray, predicted: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        return float(np.nanmean(pearson_per_feature(np.log1p(observed), np.log1p(predicted))))


def run_spvi(args, objective, seed, mdata, train, test) -> list[dict]:
    train_data, test_data = subset(mdata, train), subset(mdata, test)
    spvi.SPVI.setup_mudata(
        train_data,
        modalities=["rna", "protein"],
        layers={"rna": "counts", "protein": "counts"},
        likelihoods={"rna": "nb", "protein": "nbmixture"},
        batch_key="batch",
    )
    scvi.settings.seed = seed
    model = spvi.SPVI(
        train_data, n_shared=args.n_shared, n_private=args.n_private, n_hidden=args.n_hidden, objective=objective
    )
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs, batch_size=128, train_size=1.0, enable_progress_bar=False, enable_model_summary=False
    )
    seconds = time.perf_counter() - start
    base = {"method": "spvi", "objective": objective, "seed": seed, "train_seconds": seconds, "epochs": args.epochs}
    y_train, y_test = train_data.obs["cell_type"].to_numpy(), test_data.obs["cell_type"].to_numpy()
    z_train, z_test = (model.get_latent_representation(d, kind="all") for d in (train_data, test_data))
    n_shared, n_private = args.n_shared, args.n_private
    blocks = {
        "z_shared": slice(0, n_shared),
        "private_rna": slice(n_shared, n_shared + n_private),
        "private_protein": slice(n_shared + n_private, n_shared + 2 * n_private),
    }
    rows = [
        {**base, **embedding_rows(name, z_train[:, b], y_train, z_test[:, b], y_test)} for name, b in blocks.items()
    ]
    predicted = model.predict(source="rna", target="protein", mdata=test_data, return_numpy=True)
    observed = counts(mdata, "protein", test_data.obs_names)
    rows.append({**base, "embedding": "protein from rna", "protein_pearson": log1p_pearson(observed, predicted)})
    return rows


def train_totalvi(train_data: md.MuData, seed: int, n_latent: int, n_hidden: int, epochs: int):
    """TOTALVI on ``totalvi_mudata`` cells: batch 128, its own lr, fixed epochs on all cells; (model, seconds)."""
    modalities = {"rna_layer": "rna", "protein_layer": "protein", "batch_key": "rna"}
    scvi.model.TOTALVI.setup_mudata(
        train_data, rna_layer="counts", protein_layer="counts", batch_key="batch", modalities=modalities
    )
    scvi.settings.seed = seed
    model = scvi.model.TOTALVI(train_data, n_latent=n_latent, n_hidden=n_hidden)
    start = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=128,
        train_size=1.0,
        early_stopping=False,
        reduce_lr_on_plateau=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return model, time.perf_counter() - start


def totalvi_protein(model, masked: md.MuData) -> np.ndarray:
    """Expected protein counts of ``masked`` cells (protein zeroed) in the paired batches, averaged over them."""
    _, protein = model.get_normalized_expression(
        masked,
        transform_batch=PAIRED_BATCHES,
        include_protein_background=True,
        sample_protein_mixing=False,
        n_samples=25,
        return_numpy=True,
    )
    return protein


def run_totalvi(args, seed, mdata, train, test) -> list[dict]:
    train_data = totalvi_mudata(mdata, train)
    n_latent = args.n_shared + 2 * args.n_private
    model, seconds = train_totalvi(train_data, seed, n_latent, args.n_hidden, args.epochs)
    base = {"method": "totalvi", "objective": "", "seed": seed, "train_seconds": seconds, "epochs": args.epochs}
    test_full = totalvi_mudata(mdata, test)
    y_train = train_data["rna"].obs["cell_type"].to_numpy()
    y_test = test_full["rna"].obs["cell_type"].to_numpy()
    z_train = model.get_latent_representation(train_data)
    z_test = model.get_latent_representation(test_full)
    rows = [{**base, **embedding_rows("totalvi latent", z_train, y_train, z_test, y_test)}]
    observed = counts(mdata, "protein", test_full["rna"].obs_names)
    variants = {
        "protein from rna": totalvi_mudata(mdata, test, zero_protein=True, batch=RNA_ONLY_BATCH),
        "protein from rna (own batch)": totalvi_mudata(mdata, test, zero_protein=True),
    }
    for name, masked in variants.items():
        protein = totalvi_protein(model, masked)
        rows.append({**base, "embedding": name, "protein_pearson": log1p_pearson(observed, protein)})
    return rows


def run_ridge(seed, mdata, train, test) -> list[dict]:
    paired_train = pd.Index(train)[mdata.obs.loc[train, "paired"].astype(bool).to_numpy()]
    start = time.perf_counter()
    predicted = ridge_predict(
        np.log1p(counts(mdata, "rna", paired_train)),
        np.log1p(counts(mdata, "protein", paired_train)),
        np.log1p(counts(mdata, "rna", test)),
    )
    observed = np.log1p(counts(mdata, "protein", test))
    with np.errstate(all="ignore"):
        pearson = float(np.nanmean(pearson_per_feature(observed, predicted)))
    return [
        {
            "method": "ridge",
            "objective": "",
            "seed": seed,
            "train_seconds": time.perf_counter() - start,
            "embedding": "protein from rna",
            "protein_pearson": pearson,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--objectives", nargs="+", default=list(spvi.OBJECTIVES))
    parser.add_argument("--no-totalvi", action="store_true")
    parser.add_argument("--n-shared", type=int, default=10)
    parser.add_argument("--n-private", type=int, default=5)
    parser.add_argument("--n-hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "pbmc_cite_midas.h5mu")
    parser.add_argument("--output", type=Path, default=RESULTS / "cite_seq.csv")
    parser.add_argument("--smoke", action="store_true", help="1 epoch, first seed only")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.seeds = 1, args.seeds[:1]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    md.set_options(pull_on_update=False)
    scvi.settings.verbosity = 30
    mdata = md.read_h5mu(args.data)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        test = held_out_cells(mdata, seed)
        train = np.asarray(mdata.obs_names[~mdata.obs_names.isin(test)])
        for objective in args.objectives:
            rows += run_spvi(args, objective, seed, mdata, train, test)
        if not args.no_totalvi:
            rows += run_totalvi(args, seed, mdata, train, test)
        rows += run_ridge(seed, mdata, train, test)
        table = pd.DataFrame(rows)
        table.to_csv(args.output, index=False)
        print(table[table.seed == seed].to_string(index=False), flush=True)
    summarize("cite_seq", args.output)


if __name__ == "__main__":
    main()
