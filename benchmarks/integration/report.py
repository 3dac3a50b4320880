"""Summary of the integration benchmark: markdown tables (mean ± sd over seeds) and UMAP panels of seed 0.

Reads ``<dataset>.csv`` and ``<dataset>_umap_seed<seed>.npz`` in the results folder; writes ``summary.md`` and
``<dataset>_umap.png`` there.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from scores import BATCH_METRICS, BIO_METRICS

DATASETS = {"mop": "SNARE-seq mouse motor cortex, RNA + ATAC", "cite": "PBMC CITE-seq mosaic, RNA + protein"}
#: row order of the tables and panel order of the figures (methods not listed come last, alphabetically)
METHOD_ORDER = ["spvi mmvae++", "spvi mmvae", "spvi mopoe", "spvi mvae", "multivi", "totalvi", "mofa+", "pca", "lsi"]
METHOD_ORDER += ["pca+lsi", "ridge"]
GROUP = ["method", "variant", "block"]
EMBEDDING_COLUMNS = ["n_cells", "total", "bio", "batch", *BIO_METRICS, *BATCH_METRICS, "knn_accuracy"]
AVAILABILITY_COLUMNS = [
    f"{score}_{group}"
    for group in ("rna_only", "protein_only")
    for score in ("same_availability", "chance", "ratio", "transfer_accuracy")
]
IMPUTATION_COLUMNS = ["pearson", "n_features", "n_cells", "train_seconds", "epochs"]


def mean_sd(values: pd.Series) -> str:
    """``mean ± sd`` over seeds (3 decimals, integers for counts and seconds; ``–`` when empty)."""
    values = values.dropna()
    if values.empty:
        return "–"
    digits = 0 if values.abs().max() >= 100 or (values == values.round()).all() else 3
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def method_order(method: str) -> tuple:
    """Position of a method in :data:`METHOD_ORDER` (``multivi n_latent=30`` sorts after ``multivi``)."""
    base = method.split(" n_latent")[0]
    return (METHOD_ORDER.index(base), method) if base in METHOD_ORDER else (len(METHOD_ORDER), method)


def block_order(block: str) -> int:
    """``shared``, private blocks, ``all``."""
    return 0 if block == "shared" else 2 if block == "all" else 1


def markdown_table(table: pd.DataFrame, columns: list[str]) -> str:
    """Mean ± sd over seeds of ``columns`` for each (method, variant, block), as a markdown table.

    Parameters
    ----------
    table
        Rows of one data set.
    columns
        Metric columns (those absent from the table are skipped).

    Returns
    -------
    The table, rows sorted by method and block.
    """
    columns = [c for c in columns if c in table]
    groups = sorted(
        table.groupby(GROUP, sort=False), key=lambda g: (method_order(g[0][0]), g[0][1], block_order(g[0][2]))
    )
    header = [*GROUP, "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, rows in groups:
        cells = [*map(str, key), str(rows["seed"].nunique()), *(mean_sd(rows[c]) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dataset_section(name: str, table: pd.DataFrame) -> str:
    """Markdown section of one data set: integration metrics, (cite) availability, imputation."""
    is_imputation = table["pearson"].notna() if "pearson" in table else pd.Series(False, index=table.index)
    embeddings, imputation = table[~is_imputation], table[is_imputation]
    parts = [
        f"## {name}: {DATASETS[name]}",
        "Integration (scib-metrics on all cells with a finite block; `total` = 0.6 bio + 0.4 batch) and kNN "
        "cell-type accuracy of the held-out cells:",
        markdown_table(embeddings, [*EMBEDDING_COLUMNS, "train_seconds"]),
    ]
    if any(c in table for c in AVAILABILITY_COLUMNS):
        parts += [
            "Single-modality cells: share of their 15 neighbours with the same availability, chance level, ratio, "
            "and cell types transferred from the paired cells (kNN accuracy):",
            markdown_table(embeddings, AVAILABILITY_COLUMNS),
        ]
    parts += ["Imputation of the held-out cells (Pearson per feature, mean over features):"]
    parts += [markdown_table(imputation, IMPUTATION_COLUMNS)]
    return "\n\n".join(parts)


def umap_figure(path: Path, output: Path) -> None:
    """UMAP panels of seed 0, one column per method (main block), coloured by cell type and by batch/availability.

    Parameters
    ----------
    path
        ``<dataset>_umap_seed<seed>.npz`` written by ``run.py``.
    output
        The PNG to write.
    """
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    colour_keys = [key for key in arrays if key.startswith("obs:") and key not in ("obs:names", "obs:cell_type")]
    panels = sorted((key for key in arrays if not key.startswith("obs:")), key=lambda k: method_order(k.split("|")[0]))
    rows = [("cell type", arrays["obs:cell_type"]), (colour_keys[0][4:], arrays[colour_keys[0]])]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.6), squeeze=False)
    for column, key in enumerate(panels):
        for row, (title, labels) in enumerate(rows):
            _scatter(axes[row, column], arrays[key], labels)
            axes[row, column].set_title(f"{key.replace('|default|', '|').replace('|', ' ')}\n{title}", fontsize=9)
    for row, (_, labels) in enumerate(rows):
        handles = [plt.Line2D([], [], ls="", marker="o", color=c) for c in _colours(labels).values()]
        axes[row, -1].legend(handles, list(_colours(labels)), loc="center left", bbox_to_anchor=(1, 0.5), fontsize=6)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def _colours(labels: np.ndarray) -> dict[str, str]:
    categories = sorted(set(labels))
    palettes = [sc.pl.palettes.default_20, sc.pl.palettes.default_28, sc.pl.palettes.default_102]
    palette = next(p for p in palettes if len(p) >= len(categories))
    return dict(zip(categories, palette, strict=False))


def _scatter(ax, coordinates: np.ndarray, labels: np.ndarray) -> None:
    colours = _colours(labels)
    keep = np.isfinite(coordinates).all(axis=1)
    ax.scatter(*coordinates[keep].T, c=[colours[label] for label in labels[keep]], s=1, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])


def summarize(results: Path) -> None:
    """Write ``summary.md`` and the UMAP figures from the CSVs and ``.npz`` files in ``results``.

    Parameters
    ----------
    results
        The results folder of ``run.py``.
    """
    sections = ["# Integration benchmark: mean ± sd over seeds (see README.md for the protocol)"]
    for name in DATASETS:
        csv = results / f"{name}.csv"
        if csv.exists():
            table = pd.read_csv(csv, keep_default_na=False, na_values=[""])
            sections.append(dataset_section(name, table))
        umaps = sorted(results.glob(f"{name}_umap_seed*.npz"))
        if umaps:
            umap_figure(umaps[0], results / f"{name}_umap.png")  # the lowest seed with UMAPs
    (results / "summary.md").write_text("\n\n".join(sections) + "\n")
    print(f"wrote {results / 'summary.md'}")
