"""TCGA breast cancer (mixOmics): three-modality cross-modal prediction and subtype AUC, spvi vs MOFA+/ridge/CCA.

Data: ``../shared/data/tcga_brca_mixomics.h5mu`` (rna 220x200, mirna 220x184, protein 150x142; protein is
missing for the 70 tumours with ``split == "test"``; label ``subtype`` Basal/Her2/LumA).

For each seed: the 150 tumours that have protein are split 80/20 (stratified by subtype, ``random_state=seed``);
the held-out 30 are the test set, the other 120 plus the 70 protein-less tumours (partially observed) are
the training set. Each modality is centred and scaled with the mean and sd of its training tumours. Then

- spvi (gaussian likelihoods, ``n_shared`` + ``n_private`` per modality, 1x128 MLPs, batch 128, lr 1e-3, KL
  annealed over the run) for each objective, trained on the training tumours only;
- MOFA+ on the training tumours (three Gaussian views, protein ``NaN`` for the protein-less ones), factors of
  held-out tumours inferred from the source view(s) only, target = ``Z W_t^T`` (``mofa+``,
  ``baselines.MofaFit.predict``) or a least-squares read-out of the target from the source-inferred factors
  refitted on the training tumours (``mofa+ refit``, ``MofaFit.predict_refit``);
- ridge regression and CCA source -> target on the training tumours with both modalities.

Metrics on the held-out tumours: R² (1 - SSR/SST per feature, averaged over features; ``spvi.metrics``) for
every source -> target pair of the three modalities and for rna+mirna -> protein; subtype AUC (one-vs-rest
macro, logistic regression trained on the training tumours' ``z_shared`` / MOFA+ factors, scored on the
held-out tumours' embedding from all modalities). For spvi we also check that the 70 protein-less tumours get
finite embeddings and finite protein predictions from rna+mirna.

Usage::

    python benchmarks/tcga.py --seeds 0 1 2 3 4 --epochs 500
    python benchmarks/tcga.py --smoke --output /tmp/tcga.csv   # 2 epochs, 1 seed, fast MOFA+

Rows go to ``benchmarks/results/tcga.csv`` (rewritten), the summary to ``tcga_summary.md`` / ``tcga.png``.
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
from sklearn.neighbors import NearestNeighbors
from summarize_experiments import summarize

import spvi
from spvi.metrics import label_auc, r2_per_feature

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODALITIES = ["rna", "mirna", "protein"]
#: source -> target pairs: every ordered pair of modalities, plus rna+mirna -> protein
PAIRS = [(s, t) for s in MODALITIES for t in MODALITIES if s != t] + [("rna+mirna", "protein")]


def split(mdata: md.MuData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out tumour names: a stratified 80/20 split of the tumours that have protein."""
    with_protein = mdata["protein"].obs_names
    subtype = mdata.obs.loc[with_protein, "subtype"]
    train_p, test = train_test_split(with_protein, test_size=0.2, stratify=subtype, random_state=seed)
    train = mdata.obs_names[~mdata.obs_names.isin(test)]
    return np.asarray(train), np.asarray(test)


def scaled_views(mdata: md.MuData, train: np.ndarray, scale: bool = True) -> dict[str, pd.DataFrame]:
    """Each modality as a tumours x features frame over all tumours (NaN rows where missing), scaled on train.

    ``scale=False`` keeps ``.X`` as shipped (log expression with feature means up to ~18).
    """
    views = {}
    for m in MODALITIES:
        x = pd.DataFrame(np.asarray(mdata[m].X, dtype=np.float64), index=mdata[m].obs_names, columns=mdata[m].var_names)
        x = x.reindex(mdata.obs_names)
        mean, sd = x.loc[train].mean(), x.loc[train].std(ddof=0).replace(0, 1.0)
        views[m] = (x - mean) / sd if scale else x
    return views


def same_group_neighbour_ratio(z: np.ndarray, group: np.ndarray, k: int = 5) -> float:
    """Share of the ``k`` nearest neighbours of the ``group`` members that are members too, over chance."""
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z[group])
    share = group[neighbours[:, 1:]].mean()
    return float(share / group.mean())


def to_mudata(views: dict[str, pd.DataFrame], names: np.ndarray, obs: pd.DataFrame) -> md.MuData:
    """MuData of the given tumours; a tumour enters a modality only where that modality was measured."""
    mods = {}
    for m, x in views.items():
        rows = x.loc[names]
        rows = rows[rows.notna().all(axis=1)]
        mods[m] = md.AnnData(
            rows.to_numpy(np.float32), obs=pd.DataFrame(index=rows.index), var=pd.DataFrame(index=x.columns)
        )
    out = md.MuData(mods)
    out.obs["subtype"] = obs.loc[out.obs_names, "subtype"].to_numpy()
    return out


def source_matrix(views: dict[str, pd.DataFrame], source: str, names: np.ndarray) -> np.ndarray:
    return np.concatenate([views[s].loc[names].to_numpy() for s in source.split("+")], axis=1)


def run_spvi(args, objective, seed, views, train, test, obs) -> list[dict]:
    train_data, test_data = to_mudata(views, train, obs), to_mudata(views, test, obs)
    spvi.SPVI.setup_mudata(train_data, modalities=MODALITIES, likelihoods=dict.fromkeys(MODALITIES, "gaussian"))
    scvi.settings.seed = seed
    model = spvi.SPVI(train_data, n_shared=args.n_shared, n_private=args.n_private, objective=objective)
    start = time.perf_counter()
    stopping = (
        {
            "train_size": 0.8,
            "early_stopping": True,
            "early_stopping_patience": 50,
            "n_epochs_kl_warmup": 100,
            "early_stopping_monitor": "cross_modal_nll_validation",
            "keep_best": True,
        }
        if args.early_stopping
        else {"train_size": 1.0}
    )
    model.train(
        max_epochs=args.epochs, batch_size=128, enable_progress_bar=False, enable_model_summary=False, **stopping
    )
    seconds = time.perf_counter() - start
    z_train = model.get_latent_representation(train_data)
    z_test = model.get_latent_representation(test_data)
    auc = label_auc(z_train, train_data.obs["subtype"], z_test, test_data.obs["subtype"])
    # the protein-less training tumours: embedding from rna+mirna and protein predicted from rna+mirna
    partial = ~train_data.obs_names.isin(train_data["protein"].obs_names)
    protein_pred = model.predict(source=["rna", "mirna"], target="protein", mdata=train_data, return_numpy=True)
    extra = {
        "epochs_trained": len(model.history["elbo_train"]),
        "n_partial": int(partial.sum()),
        "partial_embedding_finite": bool(np.isfinite(z_train[partial]).all()),
        "partial_protein_finite": bool(np.isfinite(protein_pred[partial]).all()),
        "partial_knn5_same_group_over_chance": same_group_neighbour_ratio(z_train, partial),
    }
    assert extra["partial_embedding_finite"], "non-finite embedding of a protein-less tumour"
    assert extra["partial_protein_finite"], "non-finite protein prediction for a protein-less tumour"
    rows = []
    for source, target in PAIRS:
        prediction = model.predict(source=source.split("+"), target=target, mdata=test_data, return_numpy=True)
        observed = views[target].loc[test_data.obs_names].to_numpy()
        rows.append(_row("spvi", objective, seed, source, target, observed, prediction, auc, seconds, extra))
    return rows


def _row(method, objective, seed, source, target, observed, prediction, auc, seconds, extra=None) -> dict:
    return {
        "method": method,
        "objective": objective,
        "seed": seed,
        "source": source,
        "target": target,
        "r2": float(np.mean(r2_per_feature(observed, prediction))),
        "auc_subtype": auc,
        "train_seconds": seconds,
        "n_partial": np.nan,
        "partial_embedding_finite": np.nan,
        "partial_protein_finite": np.nan,
        "partial_knn5_same_group_over_chance": np.nan,
        **(extra or {}),
    }


def run_baselines(args, seed, views, train, test, obs) -> list[dict]:
    rows = []
    start = time.perf_counter()
    fit = fit_mofa(
        [views[m].loc[train].to_numpy() for m in MODALITIES],
        n_factors=args.n_factors,
        seed=seed,
        iterations=args.mofa_iterations,
    )
    mofa_seconds = time.perf_counter() - start
    train_data = [views[m].loc[train].to_numpy() for m in MODALITIES]
    test_data = [views[m].loc[test].to_numpy() for m in MODALITIES]
    z_test = fit.infer_factors(test_data, views=range(len(MODALITIES)))
    auc = label_auc(fit.factors, obs.loc[train, "subtype"], z_test, obs.loc[test, "subtype"])
    for source, target in PAIRS:
        observed = views[target].loc[test].to_numpy()
        sources = [MODALITIES.index(s) for s in source.split("+")]
        prediction = fit.predict(test_data, sources, MODALITIES.index(target))
        rows.append(_row("mofa+", "", seed, source, target, observed, prediction, auc, mofa_seconds))
        prediction = fit.predict_refit(train_data, test_data, sources, MODALITIES.index(target))
        rows.append(_row("mofa+ refit", "", seed, source, target, observed, prediction, auc, mofa_seconds))
        x_train, y_train = source_matrix(views, source, train), views[target].loc[train].to_numpy()
        x_test = source_matrix(views, source, test)
        for method, predict in (("ridge", ridge_predict), ("cca", cca_predict)):
            start = time.perf_counter()
            kwargs = {"n_components": args.cca_components} if method == "cca" else {}
            prediction = predict(x_train, y_train, x_test, **kwargs)
            rows.append(
                _row(method, "", seed, source, target, observed, prediction, np.nan, time.perf_counter() - start)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--objectives", nargs="+", default=list(spvi.OBJECTIVES))
    parser.add_argument("--n-shared", type=int, default=5)
    parser.add_argument("--n-private", type=int, default=5)
    parser.add_argument("--n-factors", type=int, default=10, help="MOFA+ factors")
    parser.add_argument("--mofa-iterations", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "tcga_brca_mixomics.h5mu")
    parser.add_argument("--output", type=Path, default=RESULTS / "tcga.csv")
    parser.add_argument("--cca-components", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--early-stopping",
        action="store_true",
        help="a fifth of the training tumours as validation set; stop on the cross-modal NLL, keep the best epoch",
    )
    parser.add_argument("--smoke", action="store_true", help="2 epochs, first seed only, 20 MOFA+ iterations")
    parser.add_argument("--as-shipped", action="store_true", help="train on .X as shipped, not scaled per feature")
    parser.add_argument("--no-baselines", action="store_true", help="spvi only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.epochs, args.seeds, args.mofa_iterations = 2, args.seeds[:1], 20
    warnings.filterwarnings("ignore")
    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(args.data)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        train, test = split(mdata, seed)
        views = scaled_views(mdata, train, scale=not args.as_shipped)
        for objective in args.objectives:
            rows += run_spvi(args, objective, seed, views, train, test, mdata.obs)
        if not args.no_baselines:
            rows += run_baselines(args, seed, views, train, test, mdata.obs)
        table = pd.DataFrame(rows)
        table["epochs"] = args.epochs
        table["early_stopping"] = args.early_stopping
        table["input"] = "as shipped" if args.as_shipped else "standardised by the user"
        table.to_csv(args.output, index=False)
        print(table[table.seed == seed].groupby(["method", "objective"])[["r2", "auc_subtype"]].mean(), flush=True)
    summarize("tcga", args.output)


if __name__ == "__main__":
    main()
