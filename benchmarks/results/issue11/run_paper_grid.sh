#!/usr/bin/env bash
# The paper grid after the issue-11 model changes (standardised Gaussian inputs, alignment term): synthetic 20/50
# private and CLL 10/100 other features, 5 seeds, MMVAE++ and MMVAE, same protocol as run_paper_r2.sh (the committed
# rows in ../paper_r2_*.csv are the "before"). ALIGN=0 runs the same without the alignment term.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
ALIGN=${ALIGN:-1.0}
OUT=benchmarks/results/issue11/paper_grid_alignment${ALIGN}.csv
for n_other in 20 50; do
  $PY benchmarks/paper_r2.py synthetic --n-other $n_other --seeds 0 1 2 3 4 --epochs 300 --early-stopping \
    --objectives mmvae++ mmvae --alignment-weight "$ALIGN" --output "$OUT"
done
for n_other in 10 100; do
  $PY benchmarks/paper_r2.py cll --n-other $n_other --seeds 0 1 2 3 4 --epochs 1500 --early-stopping \
    --objectives mmvae++ mmvae --alignment-weight "$ALIGN" --output "$OUT"
done
