"""Summaries of the TCGA, CITE-seq and semi-supervised benchmarks: markdown tables and one figure each.

Each table is mean ± sd over seeds of the raw rows written by ``tcga.py``, ``cite_seq.py`` and
``semi_supervised.py``; the figure shows the same numbers. Called by each script at the end; run by hand with::

    python benchmarks/summarize_experiments.py tcga benchmarks/results/tcga.csv

Writes ``<csv stem>_summary.md`` and ``<csv stem>.png`` beside the CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

OBJECTIVE_ORDER = ["mmvae++", "mmvae", "mopoe", "mvae"]


def _fmt(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def _method_label(method: str, objective) -> str:
    if isinstance(objective, str) and objective:
        return f"spvi {objective}"
    return str(method)


def _label_column(table: pd.DataFrame) -> pd.Series:
    objective = table["objective"].fillna("") if "objective" in table else pd.Series("", index=table.index)
    return pd.Series([_method_label(m, o) for m, o in zip(table["method"], objective, strict=True)], index=table.index)


def _order(labels) -> list[str]:
    spvi_first = [f"spvi {o}" for o in OBJECTIVE_ORDER]
    rest = sorted(set(labels) - set(spvi_first), key=lambda label: (not label.startswith("spvi"), label))
    return [label for label in spvi_first if label in set(labels)] + rest


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def summarize_tcga(table: pd.DataFrame, stem: Path) -> str:
    table = table.assign(label=_label_column(table), pair=table["source"] + " → " + table["target"])
    labels, pairs = _order(table["label"]), list(dict.fromkeys(table["pair"]))
    rows = []
    for label in labels:
        sub = table[table["label"] == label]
        row = {"method": label, "seeds": sub["seed"].nunique()}
        for pair in pairs:
            row[pair] = _fmt(sub[sub["pair"] == pair].groupby("seed")["r2"].mean())
        row["subtype AUC"] = _fmt(sub.groupby("seed")["auc_subtype"].first())
        rows.append(row)
    text = (
        "# TCGA BRCA: held-out cross-modal R² (mean over features) and subtype AUC, mean ± sd over seeds\n\n"
        + _markdown(pd.DataFrame(rows))
        + "\n"
    )
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        sub = table[table["label"] == label]
        stats = sub.groupby("pair")["r2"].agg(["mean", "std"]).reindex(pairs)
        axes[0].bar(np.arange(len(pairs)) + i * width, stats["mean"], width, yerr=stats["std"].fillna(0), label=label)
    axes[0].set_xticks(np.arange(len(pairs)) + 0.4 - width / 2, pairs, rotation=20)
    axes[0].set_ylabel("held-out R² (mean over target features)")
    axes[0].set_xlabel("source → target")
    axes[0].set_title("Cross-modal prediction of held-out tumours")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=8, ncol=2)
    auc = table.groupby(["label", "seed"])["auc_subtype"].first().dropna().groupby("label").agg(["mean", "std"])
    auc = auc.reindex([label for label in labels if label in auc.index])
    axes[1].barh(auc.index, auc["mean"], xerr=auc["std"].fillna(0), color="grey")
    axes[1].set_xlim(0.5, 1.0)
    axes[1].set_xlabel("subtype AUC (one-vs-rest macro)")
    axes[1].set_title("Subtype from the embedding")
    axes[1].invert_yaxis()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return text


def _mean_sd_table(table: pd.DataFrame, keys: list[str], metrics: dict[str, str], labels: list[str]) -> pd.DataFrame:
    """One row per combination of ``keys`` (methods in ``labels`` order), ``mean ± sd`` over seeds per metric."""
    rows = []
    for key, sub in table.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        row["seeds"] = sub["seed"].nunique()
        for column, title in metrics.items():
            row[title] = _fmt(sub.groupby("seed")[column].mean())
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["_order"] = frame["label"].map({label: i for i, label in enumerate(labels)})
    return frame.sort_values("_order", kind="stable").drop(columns="_order").rename(columns={"label": "method"})


def _bars(ax, stats: pd.DataFrame, title: str, xlabel: str) -> None:
    ax.barh(stats.index, stats["mean"], xerr=stats["std"].fillna(0), color="tab:blue")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.invert_yaxis()


def summarize_cite_seq(table: pd.DataFrame, stem: Path) -> str:
    table = table.assign(label=_label_column(table))
    labels = _order(table["label"])
    embeddings = table[table["knn_accuracy"].notna()]
    predictions = table[table["protein_pearson"].notna()]
    emb_table = _mean_sd_table(
        embeddings, ["label", "embedding"], {"knn_accuracy": "kNN accuracy (k=15)", "silhouette": "silhouette"}, labels
    )
    pred_table = _mean_sd_table(
        predictions, ["label", "embedding"], {"protein_pearson": "protein Pearson r (log1p)"}, labels
    ).rename(columns={"embedding": "prediction"})
    seconds = _mean_sd_table(table.drop_duplicates(["label", "seed"]), ["label"], {"train_seconds": "train s"}, labels)
    text = (
        "# PBMC CITE-seq mosaic: held-out paired cells, mean ± sd over seeds\n\n"
        "## Cell types in the embeddings\n\n" + _markdown(emb_table) + "\n\n"
        "## Protein from RNA (mean over proteins of the per-protein Pearson r)\n\n" + _markdown(pred_table) + "\n\n"
        "## Training time (s, this machine)\n\n" + _markdown(seconds) + "\n"
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, column, title in (
        (axes[0], "knn_accuracy", "Cell type kNN accuracy (k=15)"),
        (axes[1], "silhouette", "Cell type silhouette"),
    ):
        stats = embeddings.assign(name=embeddings["label"] + ": " + embeddings["embedding"])
        order = [n for label in labels for n in dict.fromkeys(stats.loc[stats["label"] == label, "name"])]
        _bars(ax, stats.groupby("name")[column].agg(["mean", "std"]).reindex(order), title, column.replace("_", " "))
    stats = predictions.assign(name=predictions["label"] + ": " + predictions["embedding"])
    order = [n for label in labels for n in dict.fromkeys(stats.loc[stats["label"] == label, "name"])]
    _bars(
        axes[2],
        stats.groupby("name")["protein_pearson"].agg(["mean", "std"]).reindex(order),
        "Protein from RNA, held-out cells",
        "mean per-protein Pearson r (log1p counts)",
    )
    fig.suptitle("PBMC CITE-seq mosaic (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return text


def summarize_semi_supervised(table: pd.DataFrame, stem: Path) -> str:
    metrics = {
        "auc_zshared_lr": "z_shared + logistic regression",
        "auc_label_head": "spvi label head",
        "auc_supervised": "supervised LR on features",
    }
    rows = []
    for (objective, fraction), sub in table.groupby(["objective", "label_fraction"]):
        row = {
            "objective": objective,
            "labelled fraction": f"{fraction:g}",
            "labelled patients": f"{sub['n_labelled'].mean():.0f}",
            "seeds": sub["seed"].nunique(),
        }
        row.update({title: _fmt(sub[column]) for column, title in metrics.items()})
        rows.append(row)
    text = (
        "# CLL semi-supervised: held-out IGHV AUC, mean ± sd over seeds\n\n"
        f"n_other = {', '.join(map(str, sorted(table['n_other'].unique())))}, "
        f"epochs = {', '.join(map(str, sorted(table['epochs'].unique())))}\n\n" + _markdown(pd.DataFrame(rows)) + "\n"
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for objective, sub in table.groupby("objective"):
        for (column, title), marker in zip(metrics.items(), "osD", strict=True):
            stats = sub.groupby("label_fraction")[column].agg(["mean", "std"])
            name = title if column == "auc_supervised" else f"{objective}: {title}"
            if column == "auc_supervised" and objective != table["objective"].iloc[0]:
                continue
            ax.errorbar(stats.index * 100, stats["mean"], yerr=stats["std"], marker=marker, capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks([10, 50, 100], ["10%", "50%", "100%"])
    ax.set_xlabel("labelled training patients")
    ax.set_ylabel("held-out IGHV AUC")
    ax.set_title("CLL: IGHV from partially labelled training patients")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return text


SUMMARIES = {"tcga": summarize_tcga, "cite_seq": summarize_cite_seq, "semi_supervised": summarize_semi_supervised}


def summarize(name: str, csv: Path) -> Path:
    """Write the markdown summary and the figure of one experiment next to its CSV.

    Parameters
    ----------
    name
        ``"tcga"``, ``"cite_seq"`` or ``"semi_supervised"``.
    csv
        Raw per-seed rows written by the experiment's script.

    Returns
    -------
    Path of the markdown summary.
    """
    csv = Path(csv)
    stem = csv.with_suffix("")
    text = SUMMARIES[name](pd.read_csv(csv), stem)
    path = stem.parent / f"{stem.name}_summary.md"
    path.write_text(text)
    print(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(SUMMARIES))
    parser.add_argument("csv", type=Path)
    args = parser.parse_args()
    summarize(args.name, args.csv)


if __name__ == "__main__":
    main()
