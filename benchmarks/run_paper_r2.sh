#!/usr/bin/env bash
# Cross-modal R² of shared features for the four objectives (issue: core model numbers).
# Run from the repository root: bash benchmarks/run_paper_r2.sh   (about 30 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -f benchmarks/results/paper_r2_synthetic.csv benchmarks/results/paper_r2_cll.csv
for n_other in 100 250; do
  $PY benchmarks/paper_r2.py synthetic --n-other $n_other --seeds 0 1 2 --epochs 150
done
$PY benchmarks/paper_r2.py synthetic --n-other 250 --n-obs 4000 --seeds 0 --epochs 50
for n_other in 10 1000; do
  $PY benchmarks/paper_r2.py cll --n-other $n_other --seeds 0 1 2 --epochs 500
done
$PY benchmarks/summarize_paper_r2.py
