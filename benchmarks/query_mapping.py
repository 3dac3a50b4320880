"""Query mapping (scArches surgery, ``SPVI.load_query_data``): cell types transferred to held-out batches by kNN.

Data (``../shared/data``):

- ``cite``: the PBMC CITE-seq mosaic. Reference = batches p1 (RNA only), p2 (protein only), p3 (paired);
  query = p4 (400 paired cells), mapped with both modalities, with RNA only and with protein only.
- ``mop``: SNARE-seq mouse motor cortex (RNA + ATAC, peaks open in >= 2% of nuclei, as the integration
  benchmark loads it). Reference = 9 of the 12 samples, query = the other 3 (``--query-samples``), mapped with
  both modalities and with RNA only.

For each data set, seed and ``encode_covariates`` (batch fed to the encoders or not), spvi (MMVAE++, ``nb``
RNA, ``nbmixture`` protein / ``bernoulli`` ATAC, ``batch_key="batch"``, ``n_shared=10``) is trained on the
reference for ``--reference-epochs``. The query's ``z_shared`` is then obtained in three ways:

- ``surgery``: ``SPVI.load_query_data(query, reference)`` (new batch columns trainable, every reference weight
  frozen), fine-tuned for ``--query-epochs``, then embedded by the query model;
- ``no surgery``: the reference model embeds the query with its batch relabelled as a reference batch (p3 for
  cite, the first reference sample for mop); nothing is trained;
- ``de novo``: a model trained from scratch on reference + query for ``--reference-epochs`` (the upper
  reference; it sees the query in training).

Metric: a kNN classifier (k=15, Euclidean) fitted on the reference cells' ``z_shared`` with their ``cell_type``
predicts the query cells' types; accuracy and balanced accuracy (``sklearn``). For ``surgery`` and
``no surgery`` the reference cells are embedded by the reference model. Block ``all`` (``[z_shared, z_private_1,
...]``, ``kind="all"``) is scored too where every reference and query cell has every modality (mop with both
modalities; on mop ``z_shared`` alone holds little of the cell-type structure, see ``integration/``).

Usage::

    python benchmarks/query_mapping.py --datasets cite mop --seeds 0 1 2 --mop-seeds 0 --reference-epochs 40 \
        --query-epochs 20

Rows go to ``benchmarks/results/query_mapping.csv`` and the table to ``query_mapping_summary.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scvi
import torch
from integration.loading import DATA_FILES, SHARED_DATA, load_cite, load_mop
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

import spvi

RESULTS = Path(__file__).resolve().parent / "results"
K = 15
LIKELIHOODS = {"cite": {"rna": "nb", "protein": "nbmixture"}, "mop": {"rna": "nb", "atac": "bernoulli"}}
BLOCKS = ("shared", "all")
TRAIN_KWARGS = {"batch_size": 128, "enable_progress_bar": False, "enable_checkpointing": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["cite", "mop"], choices=["cite", "mop"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for cite")
    parser.add_argument("--mop-seeds", type=int, nargs="+", default=[0], help="seeds for mop")
    parser.add_argument("--reference-epochs", type=int, default=40)
    parser.add_argument("--query-epochs", type=int, default=20)
    parser.add_argument("--encode-covariates", nargs="+", type=int, default=[0, 1], choices=[0, 1])
    parser.add_argument("--query-samples", type=int, default=3, help="mop samples held out as the query")
    parser.add_argument("--mop-cells", type=int, help="subsample mop to this many nuclei (smoke)")
    parser.add_argument("--smoke", action="store_true", help="cite only, 2 epochs, one seed")
    parser.add_argument("--output", type=Path, default=RESULTS / "query_mapping.csv")
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets, args.seeds, args.reference_epochs, args.query_epochs = ["cite"], args.seeds[:1], 2, 2
        args.encode_covariates = [1]
    return args


def subset(mdata: md.MuData, names: pd.Index, modalities: list[str]) -> md.MuData:
    """The cells ``names`` with the given modalities (each keeps the cells it measured), batch and cell type."""
    mods = {m: mdata[m][mdata[m].obs_names.isin(names)].copy() for m in modalities}
    with md.set_options(pull_on_update=False):
        out = md.MuData(mods)
    out.obs["batch"] = mdata.obs.loc[out.obs_names, "batch"].astype(str).to_numpy()
    out.obs["cell_type"] = mdata.obs.loc[out.obs_names, "cell_type"].astype(str).to_numpy()
    return out


def split(name: str, mdata: md.MuData, n_query_samples: int) -> tuple[pd.Index, pd.Index, str]:
    """Reference cells, query cells and the reference batch the query is relabelled as without surgery."""
    batch = mdata.obs["batch"].astype(str)
    if name == "cite":
        query_batches, stand_in = ["p4_0"], "p3_0"
    else:
        samples = sorted(batch.unique())
        query_batches, stand_in = samples[-n_query_samples:], samples[0]
    query = batch.isin(query_batches)
    return mdata.obs_names[~query], mdata.obs_names[query], stand_in


def train_spvi(mdata: md.MuData, likelihoods: dict, encode_covariates: bool, epochs: int, seed: int) -> spvi.SPVI:
    scvi.settings.seed = seed
    spvi.SPVI.setup_mudata(
        mdata, layers=dict.fromkeys(likelihoods, "counts"), likelihoods=likelihoods, batch_key="batch"
    )
    model = spvi.SPVI(mdata, n_shared=10, n_private=10, encode_covariates=encode_covariates)
    model.train(max_epochs=epochs, **TRAIN_KWARGS)
    return model


def knn_scores(z_reference: np.ndarray, labels_reference, z_query: np.ndarray, labels_query) -> dict[str, float]:
    predicted = KNeighborsClassifier(n_neighbors=K).fit(z_reference, labels_reference).predict(z_query)
    return {
        "accuracy": accuracy_score(labels_query, predicted),
        "balanced_accuracy": balanced_accuracy_score(labels_query, predicted),
    }


def latents(model: spvi.SPVI, mdata: md.MuData | None = None) -> dict[str, np.ndarray]:
    """``z_shared`` and the whole latent ``[z_shared, z_private_1, ...]`` (NaN rows where a modality is absent)."""
    return {block: model.get_latent_representation(mdata, kind=block) for block in BLOCKS}


def scored_rows(row: dict, reference: dict, labels_reference, query: dict, labels_query) -> list[dict]:
    """One row per block; a block with NaN rows (cells without a modality's private block) is not scored."""
    return [
        row | {"block": block} | knn_scores(reference[block], labels_reference, query[block], labels_query)
        for block in BLOCKS
        if not (np.isnan(reference[block]).any() or np.isnan(query[block]).any())
    ]


def run_one(name: str, mdata: md.MuData, seed: int, encode_covariates: bool, args: argparse.Namespace) -> list[dict]:
    likelihoods = LIKELIHOODS[name]
    modalities = list(likelihoods)
    reference_names, query_names, stand_in = split(name, mdata, args.query_samples)
    reference = subset(mdata, reference_names, modalities)
    row = {"dataset": name, "seed": seed, "encode_covariates": encode_covariates}
    row |= {"n_reference": reference.n_obs, "n_query": len(query_names)}
    start = time.perf_counter()
    model = train_spvi(reference, likelihoods, encode_covariates, args.reference_epochs, seed)
    reference_seconds = time.perf_counter() - start
    z_reference = latents(model)
    labels_reference = reference.obs["cell_type"].to_numpy()
    rows = []

    query_sets = {"+".join(modalities): modalities, f"{modalities[0]} only": modalities[:1]}
    if name == "cite":
        query_sets["protein only"] = ["protein"]
    for query_modalities_name, query_modalities in query_sets.items():
        query = subset(mdata, query_names, query_modalities)
        labels_query = query.obs["cell_type"].to_numpy()
        start = time.perf_counter()
        scvi.settings.seed = seed
        query_model = spvi.SPVI.load_query_data(query, model)
        query_model.train(max_epochs=args.query_epochs, **TRAIN_KWARGS)
        seconds = reference_seconds + time.perf_counter() - start
        method = {"query_modalities": query_modalities_name, "method": "surgery", "train_seconds": seconds}
        rows += scored_rows(row | method, z_reference, labels_reference, latents(query_model), labels_query)
        relabelled = query.copy()
        relabelled.obs["batch"] = stand_in
        method = {
            "query_modalities": query_modalities_name,
            "method": f"no surgery (query as {stand_in})",
            "train_seconds": reference_seconds,
        }
        rows += scored_rows(row | method, z_reference, labels_reference, latents(model, relabelled), labels_query)

    everything = subset(mdata, reference_names.append(query_names), modalities)
    start = time.perf_counter()
    joint = train_spvi(everything, likelihoods, encode_covariates, args.reference_epochs, seed)
    seconds = time.perf_counter() - start
    z = {block: pd.DataFrame(values, index=everything.obs_names) for block, values in latents(joint).items()}
    method = {"query_modalities": "+".join(modalities), "method": "de novo (reference + query)"}
    rows += scored_rows(
        row | method | {"train_seconds": seconds},
        {block: values.loc[reference_names].to_numpy() for block, values in z.items()},
        labels_reference,
        {block: values.loc[query_names].to_numpy() for block, values in z.items()},
        everything.obs.loc[query_names, "cell_type"].to_numpy(),
    )
    for r in rows:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    return rows


def summarize(frame: pd.DataFrame) -> str:
    grouped = frame.groupby(["dataset", "encode_covariates", "block", "query_modalities", "method"], sort=False)
    table = grouped.agg(
        seeds=("seed", "nunique"),
        n_reference=("n_reference", "first"),
        n_query=("n_query", "first"),
        accuracy=("accuracy", "mean"),
        accuracy_sd=("accuracy", "std"),
        balanced_accuracy=("balanced_accuracy", "mean"),
        train_seconds=("train_seconds", "mean"),
    ).reset_index()
    return table.to_markdown(index=False, floatfmt=".3f")


def write(frame: pd.DataFrame, args: argparse.Namespace, argv: list[str] | None) -> None:
    """The rows so far as CSV and the summary table as markdown (after every run, so partial results survive)."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output, index=False)
    summary = args.output.with_name(args.output.stem + "_summary.md")
    command = " ".join(["python benchmarks/query_mapping.py", *(argv or [])])
    summary.write_text(
        "# Query mapping: kNN (k=15) cell-type transfer from reference to query z_shared\n\n"
        f"`{command}` (reference {args.reference_epochs} epochs, query {args.query_epochs} epochs; the script's "
        "docstring says what each method is)\n\n" + summarize(frame) + "\n"
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        path = SHARED_DATA / DATA_FILES[name]
        dataset = load_mop(path, 0.02, args.mop_cells) if name == "mop" else load_cite(path)
        for seed in args.seeds if name == "cite" else args.mop_seeds:
            for encode_covariates in args.encode_covariates:
                rows += run_one(name, dataset.mdata, seed, bool(encode_covariates), args)
                write(pd.DataFrame(rows), args, argv)
    print(args.output.with_name(args.output.stem + "_summary.md").read_text())
    return pd.DataFrame(rows)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
