"""Semi-supervised label experiment on CLL (Märtens & Yau 2023): IGHV AUC with 10%, 50% and 100% of labels.

Data: ``spvi.datasets.cll`` (``../shared/data/cll_mofa.h5mu``), the 112 patients with mRNA, methylation and
IGHV. For each seed: an 80/20 split stratified by IGHV (``random_state=seed``, as ``paper_r2.py``); features
chosen as in ``paper_r2.py`` (``spvi.pp.select_shared_and_other``: top 10 IGHV-associated + ``n_other`` least
associated per modality, ranked on the training patients, centred and scaled with training statistics). Of the
training patients a stratified random fraction (10%, 50%, 100%) keeps its IGHV label; the others get ``NaN``
(unlabelled) in the ``labels_key`` column given to ``SPVI.setup_mudata``, so the label head on ``z_shared`` is
trained on the labelled patients only while the ELBO uses all of them.

Held-out AUC of IGHV (22 patients):

- ``auc_zshared_lr``: logistic regression (``spvi.metrics.label_auc``) fit on the labelled training patients'
  ``z_shared``, scored on the held-out patients' ``z_shared`` (from both modalities);
- ``auc_label_head``: the model's own label head, ``model.predict_labels`` on the held-out patients;
- ``auc_supervised``: fully supervised L2 logistic regression on the raw selected features (rna + meth,
  standardised) of the same labelled patients, C chosen by stratified CV (``LogisticRegressionCV``, 10 values,
  ``min(5, smallest class)`` folds; ``C=1`` when a class has a single labelled patient).

Note: as in ``paper_r2.py`` the features are ranked on all training patients' labels, also when only a fraction
is given to the models; the supervised baseline and spvi see the same features, so the comparison is fair, but
the selected features carry label information beyond the labelled fraction for both.

Usage::

    python benchmarks/semi_supervised.py --seeds 0 1 2 3 4 --epochs 500
    python benchmarks/semi_supervised.py --smoke --output /tmp/semi.csv

Rows go to ``benchmarks/results/semi_supervised.csv``; summary ``semi_supervised_summary.md`` and ``.png``.
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
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from summarize_experiments import summarize

import spvi
from spvi.metrics import label_auc

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODALITIES = ["rna", "meth"]


def load(path: Path, n_other: int, seed: int) -> tuple[md.MuData, np.ndarray, np.ndarray]:
    """Selected features of the paired, labelled CLL patients and the train/test patient names."""
    cll = spvi.datasets.cll(path)
    paired = cll.obs["has_rna"].astype(bool) & cll.obs["has_meth"].astype(bool) & cll.obs["IGHV"].notna()
    cll = cll[paired.to_numpy()].copy()
    cll.obs["label"] = cll.obs["IGHV"].astype(int).astype(str)
    train, test = train_test_split(cll.obs_names, test_size=0.2, stratify=cll.obs["label"], random_state=seed)
    selected = spvi.pp.select_shared_and_other(
        cll, "label", n_top=10, n_other=n_other, modalities=MODALITIES, train_obs=np.asarray(train)
    )
    return selected, np.asarray(train), np.asarray(test)


def labelled_subset(labels: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Names of a stratified random ``fraction`` of the patients (all of them for ``fraction >= 1``)."""
    if fraction >= 1:
        return labels.index.to_numpy()
    keep, _ = train_test_split(labels.index, train_size=fraction, stratify=labels, random_state=seed)
    return np.asarray(keep)


def subset(mdata: md.MuData, names: np.ndarray, given: pd.Series) -> md.MuData:
    mods = {m: mdata[m][mdata[m].obs_names.isin(names)].copy() for m in mdata.mod}
    with md.set_options(pull_on_update=False):
        out = md.MuData(mods)
    out.obs["label"] = mdata.obs.loc[out.obs_names, "label"].to_numpy()
    out.obs["label_given"] = given.reindex(out.obs_names).to_numpy(dtype=object)
    return out


def features(mdata: md.MuData, names) -> np.ndarray:
    return np.concatenate([np.asarray(mdata[m][list(names)].X, dtype=np.float64) for m in MODALITIES], axis=1)


def supervised_auc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out AUC of an L2 logistic regression on standardised features, C chosen by stratified CV."""
    scaler = StandardScaler().fit(x_train)
    smallest = pd.Series(y_train).value_counts().min()
    if smallest >= 2:
        classifier = LogisticRegressionCV(Cs=10, cv=min(5, smallest), max_iter=2000, scoring="roc_auc")
    else:
        classifier = LogisticRegression(C=1.0, max_iter=2000)
    classifier.fit(scaler.transform(x_train), y_train)
    positive = list(classifier.classes_).index("1")
    return float(roc_auc_score(y_test == "1", classifier.predict_proba(scaler.transform(x_test))[:, positive]))


def evaluate(args, objective: str, seed: int, fraction: float, mdata, train, test) -> dict:
    labels = mdata.obs.loc[train, "label"]
    labelled = labelled_subset(labels, fraction, seed)
    given = labels[labels.index.isin(labelled)]
    # spvi refuses to register new data whose labels_key column has no label at all (see the README), so the
    # held-out patients get a constant placeholder "0"; labels are not used by the encoders or the label head
    placeholder = pd.Series("0", index=pd.Index(test), dtype=object)
    train_data, test_data = subset(mdata, train, given), subset(mdata, test, placeholder)
    spvi.SPVI.setup_mudata(
        train_data, modalities=MODALITIES, likelihoods=dict.fromkeys(MODALITIES, "gaussian"), labels_key="label_given"
    )
    scvi.settings.seed = seed
    model = spvi.SPVI(
        train_data,
        n_shared=args.n_shared,
        n_private=args.n_private,
        objective=objective,
        label_weight=args.label_weight,
    )
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs, batch_size=128, train_size=1.0, enable_progress_bar=False, enable_model_summary=False
    )
    seconds = time.perf_counter() - start
    z_train, z_test = model.get_latent_representation(train_data), model.get_latent_representation(test_data)
    is_labelled = train_data.obs["label_given"].notna().to_numpy()
    y_test = test_data.obs["label"].to_numpy()
    head = model.predict_labels(test_data)
    x_labelled = features(mdata, train_data.obs_names[is_labelled])
    return {
        "objective": objective,
        "seed": seed,
        "label_fraction": fraction,
        "n_labelled": int(is_labelled.sum()),
        "n_train": len(train),
        "n_test": len(test),
        "n_other": args.n_other,
        "epochs": args.epochs,
        "label_weight": args.label_weight,
        "auc_zshared_lr": label_auc(
            z_train[is_labelled], train_data.obs["label"].to_numpy()[is_labelled], z_test, y_test
        ),
        "auc_label_head": float(roc_auc_score(y_test == "1", head["1"].to_numpy())),
        "auc_supervised": supervised_auc(
            x_labelled,
            train_data.obs["label"].to_numpy()[is_labelled],
            features(mdata, test_data.obs_names),
            y_test,
        ),
        "train_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--objectives", nargs="+", default=["mmvae++"])
    parser.add_argument("--n-other", type=int, default=1000, help="least IGHV-associated features per modality")
    parser.add_argument("--n-shared", type=int, default=2)
    parser.add_argument("--n-private", type=int, default=2)
    parser.add_argument(
        "--label-weight", type=float, default=100.0, help="weight of the label term (100 in the paper's reference code)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "cll_mofa.h5mu")
    parser.add_argument("--output", type=Path, default=RESULTS / "semi_supervised.csv")
    parser.add_argument("--smoke", action="store_true", help="2 epochs, first seed only, n_other=10")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.seeds, args.n_other = 2, args.seeds[:1], 10
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    md.set_options(pull_on_update=False)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        mdata, train, test = load(args.data, args.n_other, seed)
        for fraction in args.fractions:
            for objective in args.objectives:
                rows.append(evaluate(args, objective, seed, fraction, mdata, train, test))
                print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
        pd.DataFrame(rows).to_csv(args.output, index=False)
    summarize("semi_supervised", args.output)


if __name__ == "__main__":
    main()
