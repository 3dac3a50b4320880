"""Cross-modal R² of shared features for the four objectives (Märtens & Yau 2023, Fig. 2-3 setting).

For each seed: split the samples 80/20 (stratified by the label), train on the training samples only,
predict each modality's shared features from the other modality on the held-out samples and report
R² = 1 - SSR/SST per feature (posterior means, the target's private block at 0), plus the held-out AUC
of the label from z_shared and from each private block (logistic regression).

Usage::

    python benchmarks/paper_r2.py synthetic --n-other 250 --seeds 0 1 2
    python benchmarks/paper_r2.py cll --n-other 1000 --seeds 0 1 2

``--early-stopping`` holds out a fifth of the training samples as a validation set and stops when the
validation ELBO has not improved for ``--patience`` epochs (KL warm-up ``--kl-warmup`` epochs); ``--baselines``
adds MOFA+, ridge and PCA-CCA on the same splits (``baselines.py``). Synthetic runs also report how well each
learned block recovers each true latent block (``spvi.metrics.latent_recovery_r2``, columns
``r2_true_<truth>_from_<learned>``).

Results are appended to ``benchmarks/results/paper_r2_<dataset>.csv`` (or ``--output``).
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
import torch
from baselines import cca_predict, fit_mofa, ridge_predict
from sklearn.model_selection import train_test_split

import spvi
from spvi.metrics import label_auc, r2_per_feature

RESULTS = Path(__file__).parent / "results"
MONITORS = {"elbo": "elbo_validation", "cross-modal": "cross_modal_nll_validation"}
WEIGHT_DECAY = 1e-6  # scvi-tools' TrainingPlan default
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


def train_spvi(args: argparse.Namespace, objective: str, seed: int, train_data: md.MuData) -> tuple[spvi.SPVI, float]:
    """MMVAE-type model on the training samples; with ``--early-stopping`` a fifth of them is the validation set."""
    modalities = list(train_data.mod)
    spvi.SPVI.setup_mudata(train_data, modalities=modalities, likelihoods=dict.fromkeys(modalities, "gaussian"))
    scvi.settings.seed = seed
    model = spvi.SPVI(
        train_data,
        n_shared=args.n_shared,
        n_private=args.n_private,
        objective=objective,
        marginal_dispersion=not args.paper_dispersion,
        cross_modal_private=args.cross_modal_private,
        dropout_rate=args.dropout_rate,
        alignment_weight=args.alignment_weight,
    )
    stopping = (
        {
            "train_size": 0.8,
            "early_stopping": True,
            "early_stopping_patience": args.patience,
            "n_epochs_kl_warmup": args.kl_warmup,
            "early_stopping_monitor": MONITORS[args.stop_on],
            "keep_best": args.keep_best,
        }
        if args.early_stopping
        else {"train_size": 1.0}
    )
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        lr=args.lr,
        batch_size=128,
        enable_progress_bar=False,
        enable_model_summary=False,
        plan_kwargs={"weight_decay": args.weight_decay},
        **stopping,
    )
    return model, time.perf_counter() - start


def latent_recovery(mdata: md.MuData, blocks: dict[str, tuple[np.ndarray, np.ndarray]], train, test) -> dict:
    """Held-out R² of each true latent block from each learned block (synthetic data only), mean over factors."""
    truths = {"shared": "true_z_shared", **{f"private_{m}": f"true_z_private_{m}" for m in mdata.mod}}
    train_rows, test_rows = mdata.obs_names.get_indexer(train), mdata.obs_names.get_indexer(test)
    out = {}
    for learned, (z_train, z_test) in blocks.items():
        for truth, key in truths.items():
            true_z = mdata.obsm[key]
            r2 = spvi.metrics.latent_recovery_r2(z_train, true_z[train_rows], z_test, true_z[test_rows])
            out[f"r2_true_{truth}_from_{learned}"] = float(np.mean(r2))
    return out


def spvi_rows(args: argparse.Namespace, objective: str, seed: int, mdata, train, test) -> list[dict]:
    train_data, test_data = subset(mdata, train), subset(mdata, test)
    model, seconds = train_spvi(args, objective, seed, train_data)
    modalities = list(mdata.mod)
    z_train = model.get_latent_representation(train_data, kind="all")
    z_test = model.get_latent_representation(test_data, kind="all")
    slices = {"shared": slice(0, args.n_shared)}
    for i, m in enumerate(modalities):
        start_private = args.n_shared + i * args.n_private
        slices[f"private_{m}"] = slice(start_private, start_private + args.n_private)
    blocks = {name: (z_train[:, block], z_test[:, block]) for name, block in slices.items()}
    extra = {
        f"auc_{name}": spvi.metrics.label_auc(z_tr, train_data.obs["label"], z_te, test_data.obs["label"])
        for name, (z_tr, z_te) in blocks.items()
    }
    if args.dataset == "synthetic":
        extra |= latent_recovery(mdata, blocks, train_data.obs_names, test_data.obs_names)
    extra |= {
        "train_seconds": seconds,
        "epochs_trained": len(model.history["elbo_train"]),
        "marginal_dispersion": not args.paper_dispersion,
    }
    rows = []
    for source in modalities:
        for target in modalities:
            if source != target:
                r2 = spvi.tl.cross_modal_r2(model, source, target, test_data)
                rows.append(_row(args, "spvi", objective, seed, mdata, source, target, r2, extra))
    return rows


def variant(args: argparse.Namespace) -> str:
    """Settings that differ from this benchmark's protocol (early stopping, lr 1e-3) and the paper's model."""
    parts = []
    if not args.early_stopping:
        parts.append(f"{args.epochs} epochs, lr {args.lr:g}, no validation split")
    if args.early_stopping and args.stop_on != "elbo":
        parts.append(f"stop on {args.stop_on} NLL")
    if args.early_stopping and args.keep_best:
        parts.append("best epoch")
    if args.paper_dispersion:
        parts.append("one dispersion")
    if args.cross_modal_private != "zero":
        parts.append(f"cross_modal_private={args.cross_modal_private}")
    if args.n_shared != 2 or args.n_private != 2:
        parts.append(f"latent {args.n_shared}+{args.n_private}")
    if args.dropout_rate:
        parts.append(f"dropout {args.dropout_rate:g}")
    if args.weight_decay != WEIGHT_DECAY:
        parts.append(f"weight decay {args.weight_decay:g}")
    if args.alignment_weight != 1.0:
        parts.append(f"alignment {args.alignment_weight:g}")
    return ", ".join(parts)


def _row(args, method: str, objective: str, seed: int, mdata, source: str, target: str, r2: pd.Series, extra) -> dict:
    is_shared = mdata[target].var.loc[r2.index, "is_shared"].to_numpy(dtype=bool)
    return {
        "dataset": args.dataset,
        "n_other": "all" if args.n_other is None else args.n_other,
        "n_obs": mdata.n_obs,
        "method": method,
        "objective": objective,
        "seed": seed,
        "source": source,
        "target": target,
        "r2_shared": float(np.nanmean(r2[is_shared])),
        "r2_other": float(np.nanmean(r2[~is_shared])),
        "early_stopping": args.early_stopping,
        "variant": variant(args) if method == "spvi" else "",
        "epochs": args.epochs,
        "lr": args.lr,
        **extra,
    }


def baseline_rows(args: argparse.Namespace, seed: int, mdata, train, test) -> list[dict]:
    """MOFA+ (factors inferred from the source view, target through its loadings), ridge and PCA-CCA."""
    modalities = list(mdata.mod)
    views = {m: pd.DataFrame(np.asarray(mdata[m].X, dtype=np.float64), index=mdata[m].obs_names) for m in modalities}
    train_views = [views[m].loc[train].to_numpy() for m in modalities]
    test_views = [views[m].loc[test].to_numpy() for m in modalities]
    labels_train, labels_test = mdata.obs.loc[train, "label"], mdata.obs.loc[test, "label"]
    start = time.perf_counter()
    n_factors = args.n_shared + len(modalities) * args.n_private
    fit = fit_mofa(train_views, n_factors=n_factors, seed=seed, iterations=args.mofa_iterations)
    mofa_extra = {
        "train_seconds": time.perf_counter() - start,
        "auc_shared": label_auc(
            fit.factors, labels_train, fit.infer_factors(test_views, range(len(modalities))), labels_test
        ),
    }
    rows = []
    for s, source in enumerate(modalities):
        for t, target in enumerate(modalities):
            if s == t:
                continue
            columns = mdata[target].var_names
            r2 = pd.Series(r2_per_feature(test_views[t], fit.predict(test_views, [s], t)), index=columns)
            rows.append(_row(args, "mofa+", "", seed, mdata, source, target, r2, mofa_extra))
            for method, predict in (("ridge", ridge_predict), ("cca", cca_predict)):
                start = time.perf_counter()
                prediction = predict(train_views[s], train_views[t], test_views[s])
                timing = {"train_seconds": time.perf_counter() - start}
                r2 = pd.Series(r2_per_feature(test_views[t], prediction), index=columns)
                rows.append(_row(args, method, "", seed, mdata, source, target, r2, timing))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["synthetic", "cll"])
    parser.add_argument(
        "--n-other", default="250", help="private ('other') features per modality; 'all' (CLL): every feature"
    )
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
    parser.add_argument(
        "--early-stopping",
        action="store_true",
        help="hold out a fifth of the training samples for validation; stop when the validation ELBO stalls",
    )
    parser.add_argument(
        "--stop-on", choices=sorted(MONITORS), default="elbo", help="validation metric of --early-stopping"
    )
    parser.add_argument("--keep-best", action="store_true", help="with --early-stopping: load the best epoch's state")
    parser.add_argument("--patience", type=int, default=50, help="early stopping patience (epochs)")
    parser.add_argument("--kl-warmup", type=int, default=100, help="KL warm-up epochs with --early-stopping")
    parser.add_argument("--baselines", action="store_true", help="also MOFA+, ridge and PCA-CCA")
    parser.add_argument("--mofa-iterations", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cross-modal-private", choices=["zero", "posterior"], default="zero")
    parser.add_argument("--dropout-rate", type=float, default=0.0, help="dropout in encoders and decoders")
    parser.add_argument("--alignment-weight", type=float, default=1.0, help="weight of the experts' alignment term")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help="Adam weight decay")
    args = parser.parse_args()
    args.n_other = None if args.n_other == "all" else int(args.n_other)
    if args.epochs is None:
        args.epochs = 150 if args.dataset == "synthetic" else 1500
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    md.set_options(pull_on_update=False)
    output = args.output or RESULTS / f"paper_r2_{args.dataset}.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        mdata, train, test = load(args.dataset, args.n_other, seed, args.n_obs)
        for objective in [*args.objectives, *(["baselines"] if args.baselines else [])]:
            if objective == "baselines":
                new_rows = baseline_rows(args, seed, mdata, train, test)
            else:
                new_rows = spvi_rows(args, objective, seed, mdata, train, test)
            # re-read the file right before writing: several runs may write to it
            table = pd.DataFrame(new_rows)
            if output.exists():
                table = pd.concat([pd.read_csv(output), table], ignore_index=True)
            table.to_csv(output, index=False)
            columns = ["method", "objective", "seed", "source", "target", "r2_shared", "auc_shared"]
            print(pd.DataFrame(new_rows)[columns].to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
