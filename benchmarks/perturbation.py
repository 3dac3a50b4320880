"""Synthetic CRISPR screen: how much of each simulated knock-down survives prediction of RNA from the guides alone.

Data: :func:`spvi.datasets.synthetic_perturbation` (``--n-cells`` cells, default 2000; ``--n-genes`` genes, 500;
``--n-guides`` guides, 15, a fifth of them non-targeting; a knock-down of ``--effects`` log units of each targeting
guide's target and a downstream programme of ``--downstream-size`` genes, 10, at +-0.5 log units; two replicates),
for each number of private programmes in ``--programmes`` and each seed (the data seed and the split seed).

For each seed 20% of the cells (stratified by guide) are held out; models are trained on the others.

- spvi, each objective: ``nb`` for RNA, ``--guide-likelihood`` (default ``nb``) for guide counts,
  ``batch_key="replicate"``, default model sizes, ``--epochs`` epochs (batch 128, lr 1e-3, default KL warm-up);
  RNA of the held-out cells predicted from the guide modality alone, ``model.predict(source="guide",
  target="rna")`` (``z_shared`` from the guide expert, the RNA private block at 0, the cell's own library size).
- per-guide mean: each held-out cell gets the mean normalised expression of the training cells of its called guide
  (the guide with most counts); the group mean that a perturbation analysis would compute.
- ridge: ``RidgeCV`` from ``log1p`` guide counts to normalised expression, fit on the training cells, with one
  penalty for all genes (``ridge``) or one per gene (``ridge, penalty per gene``).

Scale: normalised expression ``x / library * 1e4`` (``library`` = total RNA counts of the cell; for spvi the
predicted expected counts over their sum). For a group of held-out cells (the cells of one guide, or the
non-targeting controls) the **pseudobulk** is ``log1p`` of the group's mean normalised expression, for observed and
for predicted cells alike (the models predict expected values, so the observed side is a mean before the log too).
Per targeting guide with target gene ``t``:

- ``observed_lfc = pseudobulk_t(guide cells) - pseudobulk_t(control cells)`` on the observed counts and
  ``predicted_lfc`` the same on the predictions; **recovered = predicted_lfc / observed_lfc** (1: the whole
  knock-down, 0: none);
- ``true_lfc``: the same log-fold change without noise, from the simulation's parameters: the noise-free
  normalised expression of a cell is ``1e4 * softmax(eta)`` (the expected counts over the cell's library), with
  ``eta`` its noise-free log expression (baseline, replicate shift, private programmes; see
  :func:`spvi.datasets.synthetic_perturbation`); ``true_lfc = log1p(mean_cells 1e4 softmax(eta + effect of the
  guide)) - log1p(mean_cells 1e4 softmax(eta))`` with the mean over **all** simulated cells (each given the guide,
  then no guide), so neither count noise nor which cells carry the guide enters. **recovered_truth =
  predicted_lfc / true_lfc**: what a model recovers of the population's knock-down (the per-guide mean of the
  training cells falls short of 1 only by the noise of its ~107 training cells per guide). ``target_expression``:
  ``mean_cells 1e4 softmax(eta)`` of the target without a guide (its noise-free normalised expression);
- downstream: the same with the sum over the guide's downstream genes of ``sign * lfc`` (``sign`` the true sign of
  the gene's shift), ``downstream_recovered = predicted / observed`` and ``downstream_recovered_truth = predicted /
  true``;
- ``auc_rna``: does ``z_shared`` from RNA alone separate the guide's cells from controls? Held-out AUC of a
  logistic regression (fit on training cells of that guide and the controls) on ``z_shared`` encoded from RNA only;
  ``auc_target`` the same on the observed log-normalised target gene alone (the single-gene reference). Only for
  spvi rows;
- ``code_distance``: how far the guide expert puts the guide from the controls: the distance between the mean
  ``z_shared`` (guide expert's posterior means) of the guide's held-out cells and of the control cells, in units of
  the posterior sd (root of the mean posterior variance over the guide's cells and dimensions);
- ``kl_shared_guide``: mean over held-out cells of ``KL(q(z_shared | guide) || N(0, I))`` (nats): 0 when the guide
  expert's ``z_shared`` has collapsed to the prior.

Usage::

    bash benchmarks/run_perturbation.sh sweep            # the committed sweep (see benchmarks/README.md)
    bash benchmarks/run_perturbation.sh ablations        # the committed ablations
    python benchmarks/perturbation.py --smoke --output /tmp/perturbation.csv

Variants for the ablations (``--cross-modal-private``, ``--no-marginal-dispersion``, ``--alignment-weight``,
``--guide-likelihood``, ``--guide-input``, ``--max-kl-weight``, ``--shared-kl-weight``, ``--downstream-size``) are
named in the ``variant`` column; rows are appended when ``--append``. ``--eval-epochs`` evaluates the same run
after fewer epochs too (a variant each).
Writes ``<output>`` (one row per method, setting, seed and targeting guide) and ``<output stem>_summary.md``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scvi
import torch
from baselines import ridge_predict
from lightning.pytorch.callbacks import Callback
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

import spvi

RESULTS = Path(__file__).parent / "results"
OBJECTIVES = ("mmvae++", "mmvae", "mopoe", "mvae")
SCALE = 1e4
DEFAULT_EPOCHS = 60


def split(mdata: md.MuData, seed: int, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Positions of training and held-out cells, stratified by guide."""
    positions = np.arange(mdata.n_obs)
    return train_test_split(positions, test_size=fraction, random_state=seed, stratify=mdata.obs["guide"])


def subset(mdata: md.MuData, positions: np.ndarray, guide_input: str) -> md.MuData:
    """Cells at ``positions`` as a new MuData with ``replicate`` in ``obs``; the guide modality as ``guide_input``."""
    names = mdata.obs_names[positions]
    mods = {m: mdata[m][names].copy() for m in mdata.mod}
    if guide_input == "binary":
        mods["guide"].X = (mods["guide"].X > 0).astype(np.float32)
    with md.set_options(pull_on_update=False):
        out = md.MuData(mods)
    out.obs["replicate"] = mdata.obs["replicate"].to_numpy()[positions]
    return out


def normalised(counts: np.ndarray) -> np.ndarray:
    """``counts / library * 1e4`` per cell (the library is the row sum)."""
    return counts / counts.sum(axis=1, keepdims=True) * SCALE


def pseudobulk(expression: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``log1p`` of the mean normalised expression of ``cells``, per gene."""
    return np.log1p(expression[cells].mean(axis=0))


def noise_free_expression(mdata: md.MuData) -> tuple[np.ndarray, pd.DataFrame]:
    """Noise-free pseudobulk of the simulated population: per gene, ``mean_cells 1e4 softmax(eta)`` without a
    guide (controls), and per targeting guide ``log1p`` of the same with the guide's effect minus ``log1p`` of the
    controls' (genes x targeting guides), over all simulated cells."""
    rna = mdata["rna"]
    replicate = mdata.obs["replicate"].to_numpy()
    eta = (
        rna.var["baseline"].to_numpy()
        + rna.varm["replicate_shift"][replicate].to_numpy().T
        + mdata.obsm["programme_activity"] @ rna.varm["programme_loading"].to_numpy().T
    )

    def mean_expression(log_expression: np.ndarray) -> np.ndarray:
        weights = np.exp(log_expression - log_expression.max(axis=1, keepdims=True))
        return (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0) * SCALE

    control = mean_expression(eta)
    effects = rna.varm["perturbation_effect"].loc[:, mdata["guide"].var["is_targeting"].to_numpy()]
    true_lfc = {
        guide: np.log1p(mean_expression(eta + effect.to_numpy())) - np.log1p(control)
        for guide, effect in effects.items()
    }
    return control, pd.DataFrame(true_lfc, index=rna.var_names)


def recovery_rows(mdata: md.MuData, test: np.ndarray, observed: np.ndarray, predicted: np.ndarray) -> list[dict]:
    """Per targeting guide: observed, noise-free and predicted knock-down of its target and downstream programme."""
    guide_of_cell = mdata.obs["guide"].to_numpy()[test]
    guides = mdata["guide"].var
    effects = mdata["rna"].varm["perturbation_effect"]
    control_expression, true_lfc = noise_free_expression(mdata)
    controls = np.isin(guide_of_cell, guides.index[~guides["is_targeting"]])
    observed_control, predicted_control = pseudobulk(observed, controls), pseudobulk(predicted, controls)
    rows = []
    for guide, info in guides[guides["is_targeting"]].iterrows():
        cells = guide_of_cell == guide
        observed_lfc = pseudobulk(observed, cells) - observed_control
        predicted_lfc = pseudobulk(predicted, cells) - predicted_control
        target = mdata["rna"].var_names.get_loc(info["target"])
        shift = effects[guide].to_numpy().copy()
        shift[target] = 0.0
        downstream_observed = float(np.sign(shift) @ observed_lfc)
        downstream_predicted = float(np.sign(shift) @ predicted_lfc)
        downstream_true = float(np.sign(shift) @ true_lfc[guide].to_numpy())
        rows.append(
            {
                "guide": guide,
                "target": info["target"],
                "true_effect": float(info["effect"]),
                "n_test_cells": int(cells.sum()),
                "observed_lfc": float(observed_lfc[target]),
                "predicted_lfc": float(predicted_lfc[target]),
                "recovered": float(predicted_lfc[target] / observed_lfc[target]),
                "true_lfc": float(true_lfc[guide].iloc[target]),
                "recovered_truth": float(predicted_lfc[target] / true_lfc[guide].iloc[target]),
                "target_expression": float(control_expression[target]),
                "downstream_observed": downstream_observed,
                "downstream_predicted": downstream_predicted,
                "downstream_recovered": downstream_predicted / downstream_observed if shift.any() else np.nan,
                "downstream_true": downstream_true,
                "downstream_recovered_truth": downstream_predicted / downstream_true if shift.any() else np.nan,
            }
        )
    return rows


def separation_auc(mdata: md.MuData, train: np.ndarray, test: np.ndarray, z_train, z_test) -> dict[str, float]:
    """Held-out AUC of a logistic regression separating each targeting guide's cells from the controls."""
    guide_of_cell = mdata.obs["guide"].to_numpy()
    guides = mdata["guide"].var
    controls = guides.index[~guides["is_targeting"]]
    auc = {}
    for guide in guides.index[guides["is_targeting"]]:
        keep_train = np.isin(guide_of_cell[train], [guide, *controls])
        keep_test = np.isin(guide_of_cell[test], [guide, *controls])
        y_train = guide_of_cell[train][keep_train] == guide
        y_test = guide_of_cell[test][keep_test] == guide
        classifier = LogisticRegression(max_iter=1000).fit(z_train[keep_train], y_train)
        auc[guide] = float(roc_auc_score(y_test, classifier.decision_function(z_test[keep_test])))
    return auc


def code_distance(mdata: md.MuData, test: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> dict[str, float]:
    """Per targeting guide: Euclidean distance between the average guide-expert ``z_shared`` mean of its held-out
    cells and that of the controls, in posterior sds (root of the guide's cells' mean posterior variance)."""
    guide_of_cell = mdata.obs["guide"].to_numpy()[test]
    guides = mdata["guide"].var
    control = mean[np.isin(guide_of_cell, guides.index[~guides["is_targeting"]])].mean(axis=0)
    distance = {}
    for guide in guides.index[guides["is_targeting"]]:
        cells = guide_of_cell == guide
        distance[guide] = float(np.linalg.norm(mean[cells].mean(axis=0) - control) / np.sqrt(variance[cells].mean()))
    return distance


class EvaluateAt(Callback):
    """Evaluate the model at the end of the given epochs (counted from 1) without changing the run.

    Evaluation draws from the random number generators (data loaders seed themselves from PyTorch's), so their
    states are restored afterwards: the evaluation at epoch ``e`` of a longer run is that of a run of ``e`` epochs
    with the same KL warm-up. ``results[e]`` is ``(rows, training seconds up to e, evaluation excluded)``.
    """

    def __init__(self, epochs: list[int], evaluate) -> None:
        self.epochs, self.evaluate = set(epochs), evaluate
        self.results: dict[int, tuple[list[dict], float]] = {}
        self.start, self.evaluation_seconds = time.perf_counter(), 0.0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        began = time.perf_counter()
        # scvi.settings.seed seeds NumPy's global generator, so that is the one to keep
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002
        rows = self.evaluate()
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])  # noqa: NPY002
        random.setstate(states[2])
        pl_module.train()
        self.results[epoch] = rows, began - self.start - self.evaluation_seconds
        self.evaluation_seconds += time.perf_counter() - began


def run_spvi(
    args, objective: str, mdata: md.MuData, train: np.ndarray, test: np.ndarray
) -> dict[int, tuple[list[dict], float]]:
    """Train one objective; per epoch in ``args.eval_epochs`` (and at the end) the rows and training seconds."""
    train_data, test_data = subset(mdata, train, args.guide_input), subset(mdata, test, args.guide_input)
    likelihoods = {"rna": "nb", "guide": args.guide_likelihood}
    spvi.SPVI.setup_mudata(train_data, modalities=["rna", "guide"], likelihoods=likelihoods, batch_key="replicate")
    model = spvi.SPVI(
        train_data,
        objective=objective,
        cross_modal_private=args.cross_modal_private,
        marginal_dispersion=not args.no_marginal_dispersion,
        alignment_weight=args.alignment_weight,
        shared_kl_weight=args.shared_kl_weight,
    )
    observed = normalised(mdata["rna"].X[test].astype(np.float64))
    log_expression = np.log1p(normalised(mdata["rna"].X.astype(np.float64)))

    def evaluate() -> list[dict]:
        predicted = normalised(
            model.predict(source="guide", target="rna", mdata=test_data, return_numpy=True).astype(np.float64)
        )
        rows = recovery_rows(mdata, test, observed, predicted)
        z_rna_train = model.get_latent_representation(train_data, modality="rna")
        z_rna_test = model.get_latent_representation(test_data, modality="rna")
        auc_rna = separation_auc(mdata, train, test, z_rna_train, z_rna_test)
        kl_guide = model._mean_shared_kl(test_data)["guide"]
        distance = code_distance(
            mdata, test, *model.get_latent_representation(test_data, modality="guide", return_dist=True)
        )
        for row in rows:
            row["kl_shared_guide"] = kl_guide
            row["code_distance"] = distance[row["guide"]]
            target = mdata["rna"].var_names.get_loc(row["target"])
            gene = log_expression[:, [target]]
            row["auc_rna"] = auc_rna[row["guide"]]
            row["auc_target"] = separation_auc(mdata, train, test, gene[train], gene[test])[row["guide"]]
        return rows

    evaluations = EvaluateAt(sorted({*args.eval_epochs, args.epochs}), evaluate)
    model.train(
        max_epochs=args.epochs,
        max_kl_weight=args.max_kl_weight,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[evaluations],
    )
    return evaluations.results


def run_baselines(mdata: md.MuData, train: np.ndarray, test: np.ndarray) -> dict[str, list[dict]]:
    expression = normalised(mdata["rna"].X.astype(np.float64))
    guide_counts = mdata["guide"].X.astype(np.float64)
    called = np.asarray(mdata["guide"].var_names)[guide_counts.argmax(axis=1)]
    group_means = pd.DataFrame(expression[train]).groupby(called[train]).mean()
    per_guide = group_means.loc[called[test]].to_numpy()
    observed = expression[test]
    rows = {"per-guide mean": recovery_rows(mdata, test, observed, per_guide)}
    for method, alpha_per_target in (("ridge", False), ("ridge, penalty per gene", True)):
        ridge = ridge_predict(
            np.log1p(guide_counts[train]),
            expression[train],
            np.log1p(guide_counts[test]),
            alpha_per_target=alpha_per_target,
        )
        rows[method] = recovery_rows(mdata, test, observed, np.clip(ridge, 0, None))
    return rows


def variant_name(args, epochs: int) -> str:
    parts = []
    if args.cross_modal_private != "zero":
        parts.append(f"cross_modal_private={args.cross_modal_private}")
    if args.no_marginal_dispersion:
        parts.append("marginal_dispersion=False")
    if args.alignment_weight != 1.0:
        parts.append(f"alignment_weight={args.alignment_weight:g}")
    if args.guide_likelihood != "nb":
        parts.append(f"guide likelihood {args.guide_likelihood}")
    if args.guide_input != "counts":
        parts.append(f"guide input {args.guide_input}")
    if args.max_kl_weight != 1.0:
        parts.append(f"max_kl_weight={args.max_kl_weight:g}")
    if args.shared_kl_weight != 1.0:
        parts.append(f"shared_kl_weight={args.shared_kl_weight:g}")
    if args.downstream_size != 10:
        parts.append(f"downstream_size={args.downstream_size}")
    if epochs != DEFAULT_EPOCHS:
        parts.append(f"{epochs} epochs")
    return ", ".join(parts) or "default"


def summarize(table: pd.DataFrame, path: Path) -> None:
    """Markdown summary: per setting and method, recovered share of the knock-downs (mean over seeds of the
    per-seed mean and minimum over guides), against the observed and the noise-free knock-down, the downstream share
    and the RNA-only ``z_shared`` AUC. Tables written before the noise-free columns existed show "–" there."""
    table = table.assign(
        method=np.where(table["objective"].isna(), table["method"], "spvi " + table["objective"].fillna("")),
        **{column: np.nan for column in ("recovered_truth", "downstream_recovered_truth") if column not in table},
    )
    keys = ["variant", "effect", "n_programmes", "method"]
    per_seed = table.groupby([*keys, "seed"], sort=False).agg(
        recovered_mean=("recovered", "mean"),
        recovered_min=("recovered", "min"),
        truth_mean=("recovered_truth", "mean"),
        truth_min=("recovered_truth", "min"),
        downstream_truth=("downstream_recovered_truth", "mean"),
        downstream=("downstream_recovered", "mean"),
        auc_rna=("auc_rna", "mean"),
        auc_target=("auc_target", "mean"),
        kl_shared_guide=("kl_shared_guide", "first"),
        programme_share=("programme_variance_share", "first"),
    )

    def fmt(values: pd.Series) -> str:
        values = values.dropna()
        if values.empty:
            return "–"
        return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else f"{values.mean():.2f}"

    rows = []
    for key, group in per_seed.groupby(keys, sort=False):
        rows.append(
            dict(zip(keys, key, strict=True))
            | {
                "seeds": len(group),
                "private share of var(eta)": f"{group['programme_share'].mean():.2f}",
                "recovered (mean over guides)": fmt(group["recovered_mean"]),
                "recovered (worst guide)": fmt(group["recovered_min"]),
                "vs truth (mean)": fmt(group["truth_mean"]),
                "vs truth (worst guide)": fmt(group["truth_min"]),
                "downstream recovered": fmt(group["downstream"]),
                "downstream vs truth": fmt(group["downstream_truth"]),
                "AUC z_shared from RNA": fmt(group["auc_rna"]),
                "AUC target gene": fmt(group["auc_target"]),
                "KL z_shared guide expert": fmt(group["kl_shared_guide"]),
            }
        )
    summary = pd.DataFrame(rows)
    header = (
        "# Synthetic CRISPR screen: share of each knock-down recovered from the guides alone (held-out cells)\n\n"
        "mean ± sd over seeds of the per-seed mean (and minimum) over targeting guides of predicted / observed "
        "pseudobulk log-fold change of the target gene against non-targeting controls; `vs truth`: predicted / "
        "noise-free log-fold change of the simulated population (`true_lfc`, see the script's docstring); the "
        "downstream programme likewise; AUC: held-out cells of a guide vs controls, logistic regression on "
        "`z_shared` encoded from RNA alone, and on the target gene alone; `KL z_shared guide expert`: mean over "
        "held-out cells of KL(q(z_shared | guide) || N(0, I)) in nats (0: the guide expert's `z_shared` is the prior for every cell). "
        "`private share of var(eta)`: share of the variance of the simulated noise-free log expression explained by "
        "the private programmes.\n\n"
    )
    path.write_text(header + summary.to_markdown(index=False) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--effects", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--programmes", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument(
        "--eval-epochs",
        type=int,
        nargs="+",
        default=[],
        help="also evaluate after these epochs of the same run (a variant each, named by its epochs)",
    )
    parser.add_argument("--n-cells", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=500)
    parser.add_argument("--n-guides", type=int, default=15)
    parser.add_argument("--cross-modal-private", default="zero", choices=["zero", "posterior"])
    parser.add_argument("--no-marginal-dispersion", action="store_true")
    parser.add_argument("--alignment-weight", type=float, default=1.0)
    parser.add_argument("--guide-likelihood", default="nb", choices=["nb", "poisson", "bernoulli", "nbmixture"])
    parser.add_argument("--guide-input", default="counts", choices=["counts", "binary"])
    parser.add_argument("--max-kl-weight", type=float, default=1.0)
    parser.add_argument("--shared-kl-weight", type=float, default=1.0)
    parser.add_argument("--downstream-size", type=int, default=10)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--append", action="store_true", help="append to --output instead of overwriting it")
    parser.add_argument("--output", type=Path, default=RESULTS / "perturbation.csv")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs, one seed, one setting")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.effects, args.programmes, args.epochs = [0], [1.0], [2], 2
        args.n_cells, args.n_genes, args.n_guides = 300, 100, 6
    if any(not 0 < epoch <= args.epochs for epoch in args.eval_epochs):
        parser.error(f"--eval-epochs must lie in 1..--epochs ({args.epochs}), got {args.eval_epochs}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    rows = []
    for n_programmes in args.programmes:
        for effect in args.effects:
            for seed in args.seeds:
                mdata = spvi.datasets.synthetic_perturbation(
                    n_cells=args.n_cells,
                    n_genes=args.n_genes,
                    n_guides=args.n_guides,
                    n_private_programmes=n_programmes,
                    effect=effect,
                    downstream_size=args.downstream_size,
                    seed=seed,
                )
                train, test = split(mdata, seed)
                setting = {
                    "variant": variant_name(args, args.epochs),
                    "effect": effect,
                    "n_programmes": n_programmes,
                    "programme_variance_share": mdata.uns["synthetic_perturbation"]["variance_share"]["programmes"],
                    "seed": seed,
                }
                if not args.no_baselines:
                    for method, method_rows in run_baselines(mdata, train, test).items():
                        rows += [setting | {"method": method, "objective": None} | r for r in method_rows]
                for objective in args.objectives:
                    scvi.settings.seed = seed
                    for epochs, (spvi_rows, seconds) in run_spvi(args, objective, mdata, train, test).items():
                        variant = variant_name(args, epochs)
                        rows += [
                            setting
                            | {"variant": variant, "method": "spvi", "objective": objective, "train_seconds": seconds}
                            | r
                            for r in spvi_rows
                        ]
                        done = pd.DataFrame(spvi_rows)
                        print(
                            f"{variant} | effect {effect} programmes {n_programmes} seed {seed} {objective}: "
                            f"recovered {done['recovered'].mean():.2f} (min {done['recovered'].min():.2f}; vs truth "
                            f"{done['recovered_truth'].mean():.2f}, min {done['recovered_truth'].min():.2f}), "
                            f"downstream {done['downstream_recovered'].mean():.2f}, AUC {done['auc_rna'].mean():.2f}, "
                            f"{seconds:.0f} s",
                            flush=True,
                        )
    table = pd.DataFrame(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.output.exists():
        table = pd.concat([pd.read_csv(args.output), table], ignore_index=True)
    table.to_csv(args.output, index=False)
    summarize(table, args.output.with_name(f"{args.output.stem}_summary.md"))


if __name__ == "__main__":
    main()
