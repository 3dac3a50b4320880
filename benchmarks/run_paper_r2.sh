#!/usr/bin/env bash
# The paper's experiments: cross-modal R² of shared features for the four objectives and the baselines
# (MOFA+, ridge, PCA-CCA) on synthetic GP data and on CLL, with early stopping on a validation fifth of the
# training samples. Run from the repository root after `bash scripts/setup.sh`:
#   bash benchmarks/run_paper_r2.sh [synthetic|cll|all]    (CPU; runtimes in benchmarks/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WHAT=${1:-all}
COMMON=(--early-stopping --baselines)
if [ "$WHAT" = synthetic ] || [ "$WHAT" = all ]; then
  rm -f benchmarks/results/paper_r2_synthetic.csv
  $PY benchmarks/paper_r2.py synthetic --n-other 250 --seeds 0 1 2 3 4 --epochs 300 "${COMMON[@]}"
  for n_other in 20 50 100 1000; do
    $PY benchmarks/paper_r2.py synthetic --n-other $n_other --seeds 0 1 2 --epochs 300 "${COMMON[@]}"
  done
fi
if [ "$WHAT" = cll ] || [ "$WHAT" = all ]; then
  rm -f benchmarks/results/paper_r2_cll.csv
  for n_other in 1000 10 100; do
    $PY benchmarks/paper_r2.py cll --n-other $n_other --seeds 0 1 2 3 4 --epochs 1500 "${COMMON[@]}"
  done
  $PY benchmarks/paper_r2.py cll --n-other all --seeds 0 1 2 --epochs 1500 "${COMMON[@]}"
fi
[ -f benchmarks/results/paper_r2_synthetic.csv ] && [ -f benchmarks/results/paper_r2_cll.csv ] && $PY benchmarks/summarize_paper_r2.py || true
