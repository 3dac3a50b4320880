"""Which guides' knock-downs spvi keeps least of, from the table of ``run_perturbation.sh convergence``.

Per guide x seed of the 400-epoch runs (``results/perturbation_convergence.csv``): Spearman correlation of
``recovered_truth`` (predicted / noise-free knock-down, see ``perturbation.py``) with properties of the guide (its
target's noise-free expression, the true fold change, the single-gene AUC, its number of training cells), with
the guide expert's ``code_distance`` and with the other objective and setting; the count of knock-downs with at
least half recovered; the lowest guides. Writes ``results/perturbation_guides.md``.

Usage::

    python benchmarks/perturbation_guides.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from perturbation import split
from scipy.stats import spearmanr

import spvi

RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "max_kl_weight=0.1": "alignment_weight=0, max_kl_weight=0.1, 400 epochs",
    "shared_kl_weight=0.1": "alignment_weight=0, shared_kl_weight=0.1, 400 epochs",
}
KEYS = ["effect", "seed", "guide"]


def training_cells(table: pd.DataFrame) -> pd.Series:
    """Training cells per guide, effect and seed (the split of ``perturbation.py``, data at its defaults)."""
    counts = []
    for effect, seed in table[["effect", "seed"]].drop_duplicates().itertuples(index=False):
        mdata = spvi.datasets.synthetic_perturbation(
            n_cells=2000, n_genes=500, n_guides=15, n_private_programmes=10, effect=effect, seed=seed
        )
        train, _ = split(mdata, seed)
        for guide, n in mdata.obs["guide"].iloc[train].value_counts().items():
            counts.append({"effect": effect, "seed": seed, "guide": guide, "n_train_cells": n})
    return pd.DataFrame(counts).set_index(KEYS)["n_train_cells"]


def correlation(x: pd.Series, y: pd.Series) -> str:
    result = spearmanr(x, y.loc[x.index])
    return f"{result.statistic:.2f} (p = {result.pvalue:.2g})"


def main() -> None:
    table = pd.read_csv(RESULTS / "perturbation_convergence.csv")
    n_train = training_cells(table)
    lines = ["# Synthetic CRISPR screen: which knock-downs spvi keeps least of (400 epochs, 10 programmes)\n"]
    recovered = {}
    for name, variant in SETTINGS.items():
        rows = table[table["variant"] == variant]
        for objective in ("mmvae++", "mmvae"):
            recovered[name, objective] = rows[rows["objective"] == objective].set_index(KEYS)
    lines.append("| setting | objective | guide x seed | >= 0.5 vs truth (1 / 2 log units) | >= 0.5 observed |")
    lines.append("|---|---|---|---|---|")
    for (name, objective), rows in recovered.items():
        by_effect = rows.groupby("effect")["recovered_truth"].apply(lambda v: int((v >= 0.5).sum()))
        lines.append(
            f"| {name} | {objective} | {len(rows)} | {int((rows['recovered_truth'] >= 0.5).sum())} "
            f"({by_effect.get(1.0, 0)} / {by_effect.get(2.0, 0)}) | {int((rows['recovered'] >= 0.5).sum())} |"
        )
    lines.append("\nSpearman correlation of MMVAE++'s `recovered_truth` per guide x seed with:\n")
    lines.append("| with | max_kl_weight=0.1 | shared_kl_weight=0.1 |")
    lines.append("|---|---|---|")
    plus = {name: recovered[name, "mmvae++"] for name in SETTINGS}
    for column in ("target_expression", "true_lfc", "auc_target", "n_test_cells"):
        values = [correlation(rows["recovered_truth"], rows[column]) for rows in plus.values()]
        lines.append(f"| `{column}` | {' | '.join(values)} |")
    values = [correlation(rows["recovered_truth"], n_train) for rows in plus.values()]
    lines.append(f"| training cells of the guide | {' | '.join(values)} |")
    values = [
        correlation(rows["recovered_truth"], recovered[name, "mmvae"]["recovered_truth"]) for name, rows in plus.items()
    ]
    lines.append(f"| MMVAE's `recovered_truth` | {' | '.join(values)} |")
    distance = plus["shared_kl_weight=0.1"]["code_distance"]
    lines.append(f"| `code_distance` | – | {correlation(plus['shared_kl_weight=0.1']['recovered_truth'], distance)} |")
    across = correlation(plus["max_kl_weight=0.1"]["recovered_truth"], plus["shared_kl_weight=0.1"]["recovered_truth"])
    mmvae_distance = recovered["shared_kl_weight=0.1", "mmvae"]
    lines.append(
        f"\nBetween the two settings (MMVAE++): {across}. MMVAE, `shared_kl_weight=0.1`, with `code_distance`: "
        f"{correlation(mmvae_distance['recovered_truth'], mmvae_distance['code_distance'])}. `code_distance` "
        f"(MMVAE++, `shared_kl_weight=0.1`): {distance.min():.1f} to {distance.max():.1f} posterior sds "
        f"(median {np.median(distance):.1f}).\n"
    )
    lowest = plus["shared_kl_weight=0.1"].assign(
        **{"max_kl_weight=0.1": plus["max_kl_weight=0.1"]["recovered_truth"], "n_train_cells": n_train}
    )
    lowest = lowest.rename(columns={"recovered_truth": "shared_kl_weight=0.1"}).sort_values("shared_kl_weight=0.1")
    columns = ["shared_kl_weight=0.1", "max_kl_weight=0.1", "code_distance", "target_expression", "n_train_cells"]
    lines.append("Lowest MMVAE++ knock-downs (`recovered_truth`):\n")
    lines.append(lowest[columns].head(8).round(2).reset_index().to_markdown(index=False))
    (RESULTS / "perturbation_guides.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
