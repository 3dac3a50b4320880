"""Summarise ``results/paper_r2_<dataset>.csv`` into ``results/paper_r2_summary.md`` and ``results/paper_r2.png``.

Each cell is mean ± sd over seeds; a seed's cross-modal R² is the mean over the shared features of both directions.
Run by ``run_paper_r2.sh``; by hand: ``python benchmarks/summarize_paper_r2.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from summarize_experiments import _fmt, _label_column, _markdown, _order

RESULTS = Path(__file__).parent / "results"
FIGURE_VARIANTS = {"spvi mmvae++ (cross_modal_private=posterior)", "spvi mmvae++ (latent 10+10)"}
DATASETS = {"synthetic": "Synthetic GP (1000 samples)", "cll": "CLL, mRNA + methylation (112 patients)"}


def per_seed(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method, n_other and seed: R² of shared features averaged over both directions."""
    label = _label_column(table)
    if "variant" in table:
        variant = table["variant"].fillna("").astype(str)
        label = label.where(variant == "", label + " (" + variant + ")")
    table = table.assign(label=label, n_other=table["n_other"].astype(str))
    metrics = ["r2_shared", "r2_other", *[c for c in table if c.startswith(("auc_", "r2_true_"))], "epochs_trained"]
    return table.groupby(["label", "n_other", "seed"], as_index=False)[[c for c in metrics if c in table]].mean()


def _n_other_order(values) -> list[str]:
    return sorted(set(values), key=lambda v: float("inf") if v == "all" else float(v))


def pivot(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    columns = _n_other_order(runs["n_other"])
    rows = []
    for label in _order(runs["label"]):
        mine = runs[runs["label"] == label]
        cells = [_fmt(mine.loc[mine["n_other"] == n, metric]) for n in columns]
        rows.append([label, *cells])
    return pd.DataFrame(rows, columns=["method", *[f"{n} other" for n in columns]])


def recovery_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Synthetic truth: how much of each true block the learned z_shared and private blocks determine."""
    spvi_runs = runs[runs["label"].str.startswith("spvi")].copy()
    private_truths = sorted(
        {c.split("_from_")[0].removeprefix("r2_true_") for c in runs if c.startswith("r2_true_private")}
    )
    spvi_runs["leak"] = spvi_runs[[f"r2_true_{t}_from_shared" for t in private_truths]].mean(axis=1)
    spvi_runs["private"] = spvi_runs[[f"r2_true_{t}_from_{t}" for t in private_truths]].mean(axis=1)
    rows = []
    for (label, n_other), group in spvi_runs.groupby(["label", "n_other"]):
        rows.append(
            [label, n_other, _fmt(group["r2_true_shared_from_shared"]), _fmt(group["leak"]), _fmt(group["private"])]
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "method",
            "other",
            "true shared from z_shared",
            "true private from z_shared",
            "true private from own private block",
        ],
    )
    frame["order"] = frame["other"].map({n: i for i, n in enumerate(_n_other_order(frame["other"]))})
    frame["label_order"] = frame["method"].map({m: i for i, m in enumerate(_order(frame["method"]))})
    return frame.sort_values(["order", "label_order"]).drop(columns=["order", "label_order"])


def main() -> None:
    sections, tables = [], {}
    for dataset, title in DATASETS.items():
        paths = sorted(RESULTS.glob(f"paper_r2_{dataset}*.csv"))
        if not paths:
            continue
        runs = per_seed(pd.concat([pd.read_csv(path) for path in paths], ignore_index=True))
        tables[dataset] = runs
        sections.append(
            f"## {title}\n\nCross-modal R² of the shared features (held-out samples):\n\n{_markdown(pivot(runs, 'r2_shared'))}\n"
        )
        sections.append(
            "AUC of the label from z_shared (spvi) or from all MOFA+ factors, held-out samples:\n\n"
            + _markdown(pivot(runs[runs["auc_shared"].notna()], "auc_shared"))
            + "\n"
        )
        if "r2_true_shared_from_shared" in runs:
            sections.append(
                "Recovery of the true latent blocks (held-out R² of a kNN regression from the learned block, mean over "
                "the true factors):\n\n" + _markdown(recovery_table(runs)) + "\n"
            )
    text = (
        "# The paper's experiments: cross-modal R² of shared features\n\n"
        "Produced by `bash benchmarks/run_paper_r2.sh`; raw rows in `paper_r2_<dataset>*.csv`. Mean ± sd over seeds.\n\n"
        + "\n".join(sections)
    )
    (RESULTS / "paper_r2_summary.md").write_text(text)
    # the figure: the paper's protocol for every method, and the MMVAE++ variants the README discusses
    all_labels = _order(pd.concat([runs["label"] for runs in tables.values()]))
    labels = [label for label in all_labels if "(" not in label or label in FIGURE_VARIANTS]
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    colours = dict(zip(labels, palette, strict=False))
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables) + 3.5, 4.2), squeeze=False)
    for ax, (dataset, runs) in zip(axes[0], tables.items(), strict=True):
        order = _n_other_order(runs["n_other"])
        present = [label for label in labels if label in set(runs["label"])]
        for i, label in enumerate(present):
            stats = runs[runs["label"] == label].groupby("n_other")["r2_shared"].agg(["mean", "std"]).reindex(order)
            offset = (i - (len(present) - 1) / 2) * 0.025  # side by side where methods share a setting
            style = "-o" if label.startswith("spvi") else "--s"
            ax.errorbar(
                [x + offset for x in range(len(order))],
                stats["mean"],
                yerr=stats["std"],
                fmt=style,
                capsize=2,
                color=colours[label],
                label=label,
                markersize=4,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(
            xticks=range(len(order)),
            xticklabels=order,
            xlabel="other (private) features per modality",
            ylabel="held-out cross-modal R² of shared features",
            title=DATASETS[dataset],
        )
        ax.set_xlim(-0.5, len(order) - 0.5)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    fig.legend([handles[label] for label in labels], labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 3.4 / (5 * len(tables) + 3.5), 1))
    fig.savefig(RESULTS / "paper_r2.png", dpi=120)
    print(text)


if __name__ == "__main__":
    main()
