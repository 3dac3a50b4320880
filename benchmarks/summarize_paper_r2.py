"""Summarise benchmarks/results/paper_r2_*.csv into benchmarks/results/paper_r2_summary.md."""

from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    frames = [pd.read_csv(path) for path in sorted(RESULTS.glob("paper_r2_*.csv"))]
    results = pd.concat(frames, ignore_index=True)
    per_run = results.groupby(["dataset", "n_obs", "n_other", "objective", "seed"], as_index=False).agg(
        r2_shared=("r2_shared", "mean"), auc_shared=("auc_shared", "first"), seconds=("train_seconds", "first")
    )
    summary = per_run.groupby(["dataset", "n_obs", "n_other", "objective"], as_index=False).agg(
        r2_shared_mean=("r2_shared", "mean"),
        r2_shared_sd=("r2_shared", "std"),
        auc_shared_mean=("auc_shared", "mean"),
        seeds=("seed", "nunique"),
        train_seconds=("seconds", "mean"),
    )
    table = summary.to_markdown(index=False, floatfmt=".3f")
    text = (
        "# Cross-modal R² of shared features (held-out 20%, mean of both directions)\n\n"
        "Produced by `bash benchmarks/run_paper_r2.sh`; raw rows in `paper_r2_<dataset>.csv`.\n\n" + table + "\n"
    )
    (RESULTS / "paper_r2_summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
