"""Cross-modal R² of shared features for the four objectives (Märtens & Yau 2023, Fig. 2-3 setting).

For each seed: split the samples 80/20 (stratified by the label), train on the training samples only,
predict each modality's shared features from the other modality on the held-out samples and report
R² = 1 - SSR/SST per feature (posterior means, the target's private block at 0), plus the held-out AUC
of the label from z_shared and from each private block (logistic regression).

Usage::

    python benchmarks/paper_r2.py synthetic --n-other 250 --seeds 0 1 2
    python benchmarks/paper_r2.py cll --n-other 1000 --seeds 0 1 2

Results are appended to ``benchmarks/results/paper_r2_<dataset>.csv``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scvi
from sklearn.model_selection import train_test_split

import spvi

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(dataset: str, n_other: int, seed: int, n_obs: int) -> tuple[md.MuData, np.ndarray, np.ndarray]:
    """The data with shared/other features selected, and the train/test sample names."""
    if dataset == "synthetic":
        mdata = spvi.datasets.synthetic_gp(n_obs=n_obs, n_shared_features=10, n_private_features=n_other, seed=seed)
        train, test = train_test_split(mdata.obs_names, test_size=0.2, stratify=mdata.obs["label"], random_state=seed)
        return mdata, np.asarray(train), np.asarray(test)
    cll = spvi.datasets.cll(SHARED_DATA / "cll_mofa.h5mu")
    paired = cll.obs["has_rna"].astype(bool) & cll.obs["has_meth"].astype(bool) & cll.obs["IGHV"].notna()
    cll = cll[paired.to_numpy()].copy()
    cll.obs["label"] = cll.obs["IGHV"].astype(int).astype(str)
    train, test = train_test_split(cll.obs_names, test_size=0.2, stratify=cll.obs["label"], random_state=seed)
    selected = spvi.pp.select_shared_and_other(
        cll, "label", n_top=10, n_other=n_other, modalities=["rna", "meth"], train_obs=np.asarray(train)
    )
    return selected, np.asarray(train), np.asarray(test)


def subset(mdata: md.MuData, names: np.ndarray) -> md.MuData:
    mods = {m: mdata[m][mdata[m].obs_names.isin(names)].copy() for m in mdata.mod}
    out = md.MuData(mods)
    out.obs["label"] = mdata.obs.loc[out.obs_names, "label"].to_numpy()
    return out


def evaluate(args: argparse.Namespace, objective: str, seed: int) -> list[dict]:
    mdata, train, test = load(args.dataset, args.n_other, seed, args.n_obs)
    train_data, test_data = subset(mdata, train), subset(mdata, test)
    modalities = list(mdata.mod)
    spvi.SPVI.setup_mudata(train_data, modalities=modalities, likelihoods=dict.fromkeys(modalities, "gaussian"))
    scvi.settings.seed = seed
    model = spvi.SPVI(
        train_data,
        n_shared=args.n_shared,
        n_private=args.n_private,
        objective=objective,
        marginal_dispersion=not args.paper_dispersion,
    )
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        lr=args.lr,
        batch_size=128,
        train_size=1.0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    seconds = time.perf_counter() - start
    z_train = model.get_latent_representation(train_data, kind="all")
    z_test = model.get_latent_representation(test_data, kind="all")
    blocks = {"shared": slice(0, args.n_shared)}
    for i, m in enumerate(modalities):
        start_private = args.n_shared + i * args.n_private
        blocks[f"private_{m}"] = slice(start_private, start_private + args.n_private)
    aucs = {
        f"auc_{name}": spvi.metrics.label_auc(
            z_train[:, block], train_data.obs["label"], z_test[:, block], test_data.obs["label"]
        )
        for name, block in blocks.items()
    }
    rows = []
    for source in modalities:
        for target in modalities:
            if source == target:
                continue
            r2 = spvi.tl.cross_modal_r2(model, source, target, test_data)
            is_shared = mdata[target].var.loc[r2.index, "is_shared"].to_numpy(dtype=bool)
            rows.append(
                {
                    "dataset": args.dataset,
                    "n_other": args.n_other,
                    "n_obs": mdata.n_obs,
                    "marginal_dispersion": not args.paper_dispersion,
                    "objective": objective,
                    "seed": seed,
                    "source": source,
                    "target": target,
                    "r2_shared": float(np.nanmean(r2[is_shared])),
                    "r2_other": float(np.nanmean(r2[~is_shared])),
                    "epochs": args.epochs,
                    "lr": args.lr,
                    "train_seconds": seconds,
                    **aucs,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["synthetic", "cll"])
    parser.add_argument("--n-other", type=int, default=250, help="private ('other') features per modality")
    parser.add_argument("--objectives", nargs="+", default=list(spvi.OBJECTIVES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: 150 (synthetic), 1500 (cll)")
    parser.add_argument("--n-obs", type=int, default=1000, help="samples of the synthetic data")
    parser.add_argument(
        "--paper-dispersion", action="store_true", help="one dispersion for all terms (marginal_dispersion=False)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-shared", type=int, default=2)
    parser.add_argument("--n-private", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 150 if args.dataset == "synthetic" else 1500
    warnings.filterwarnings("ignore")
    md.set_options(pull_on_update=False)
    output = args.output or RESULTS / f"paper_r2_{args.dataset}.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for objective in args.objectives:
            rows = pd.DataFrame(evaluate(args, objective, seed))
            rows.to_csv(output, mode="a", header=not output.exists(), index=False)
            print(
                rows[["objective", "seed", "source", "target", "r2_shared", "auc_shared", "train_seconds"]].to_string(
                    index=False
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
