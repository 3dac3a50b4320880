#!/usr/bin/env bash
# The paper grid to rerun after a model change: synthetic 20/50 private and CLL 10/100 other features, 5 seeds,
# MMVAE++ and MMVAE, the protocol of run_paper_r2.sh (its committed rows in results/paper_r2_*.csv are the
# reference). Writes results/issue11/paper_grid_alignment<ALIGN>.csv; ALIGN=0 runs it without the alignment term.
# ~35 min on one idle core.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ALIGN=${ALIGN:-1.0}
OUT=${OUT:-benchmarks/results/issue11/paper_grid_alignment${ALIGN}.csv}
for n_other in 20 50; do
  $PY benchmarks/paper_r2.py synthetic --n-other $n_other --seeds 0 1 2 3 4 --epochs 300 --early-stopping \
    --objectives mmvae++ mmvae --alignment-weight "$ALIGN" --output "$OUT"
done
for n_other in 10 100; do
  $PY benchmarks/paper_r2.py cll --n-other $n_other --seeds 0 1 2 3 4 --epochs 1500 --early-stopping \
    --objectives mmvae++ mmvae --alignment-weight "$ALIGN" --output "$OUT"
done
