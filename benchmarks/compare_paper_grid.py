"""Paper grid before/after a model change: mean ± sd over seeds of held-out R² (shared features) and label AUC.

Compares the rows of ``results/paper_r2_{synthetic,cll}.csv`` (the reference protocol, default variant) with a
rerun written by ``run_paper_grid_check.sh``, on the same datasets, settings, objectives and seeds.

Usage::

    python benchmarks/compare_paper_grid.py benchmarks/results/issue11/paper_grid_alignment1.0.csv [more.csv ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"
KEY = ["dataset", "n_other", "objective"]


def per_setting(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds (each seed averaged over both directions) of R² and AUC per dataset/setting/objective."""
    per_seed = rows.groupby([*KEY, "seed"])[["r2_shared", "auc_shared"]].mean()
    stats = per_seed.groupby(KEY).agg(["mean", "std", "count"])
    return pd.DataFrame(
        {
            metric: [f"{m:.3f} ± {s:.3f} ({int(n)})" for m, s, n in stats[metric].to_numpy()]
            for metric in ("r2_shared", "auc_shared")
        },
        index=stats.index,
    )


def main(paths: list[str]) -> None:
    reference = pd.concat(pd.read_csv(RESULTS / f"paper_r2_{d}.csv") for d in ("synthetic", "cll"))
    reference = reference[(reference["method"] == "spvi") & reference["variant"].isna()]
    tables = {"before": reference}
    tables |= {Path(p).stem: pd.read_csv(p) for p in paths}
    for table in tables.values():
        table["n_other"] = table["n_other"].astype(str)
    reruns = pd.concat([t for name, t in tables.items() if name != "before"])
    wanted = reruns[KEY + ["seed"]].drop_duplicates()
    columns = {}
    for name, table in tables.items():
        table = table.merge(wanted, on=KEY + ["seed"]) if name == "before" else table[table["method"] == "spvi"]
        for metric, values in per_setting(table).items():
            columns[f"{name} {metric}"] = values
    print(pd.DataFrame(columns).fillna("–").to_markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
