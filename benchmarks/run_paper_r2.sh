#!/usr/bin/env bash
# The paper's experiments: cross-modal R² of shared features for the four objectives and the baselines
# (MOFA+, ridge, PCA-CCA) on synthetic GP data and on CLL, with early stopping on a validation fifth of the
# training samples. Run from the repository root after `bash scripts/setup.sh`:
#   bash benchmarks/run_paper_r2.sh [synthetic|cll|variants|reference|all]    (CPU; runtimes in benchmarks/README.md)
# "variants": the model and training variants of the README (latent 10+10+10 and 8+2+2,
#   cross_modal_private="posterior", dropout, weight decay, early stopping on the cross-modal NLL with the best epoch).
# "reference": the reference code's protocol (100 epochs, lr 1e-4, all training samples, one dispersion).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WHAT=${1:-all}
COMMON=(--early-stopping --baselines)
if [ "$WHAT" = synthetic ] || [ "$WHAT" = all ]; then
  rm -f benchmarks/results/paper_r2_synthetic.csv
  $PY benchmarks/paper_r2.py synthetic --n-other 250 --seeds 0 1 2 3 4 --epochs 300 "${COMMON[@]}"
  for n_other in 20 50 100 1000; do
    $PY benchmarks/paper_r2.py synthetic --n-other $n_other --seeds 0 1 2 3 4 --epochs 300 "${COMMON[@]}"
  done
fi
if [ "$WHAT" = cll ] || [ "$WHAT" = all ]; then
  rm -f benchmarks/results/paper_r2_cll.csv
  for n_other in 1000 10 100; do
    $PY benchmarks/paper_r2.py cll --n-other $n_other --seeds 0 1 2 3 4 --epochs 1500 "${COMMON[@]}"
  done
  $PY benchmarks/paper_r2.py cll --n-other all --seeds 0 1 2 3 4 --epochs 1500 "${COMMON[@]}"
fi
if [ "$WHAT" = variants ] || [ "$WHAT" = all ]; then
  R=benchmarks/results
  rm -f $R/paper_r2_synthetic_variants.csv $R/paper_r2_cll_variants.csv
  for dataset in synthetic cll; do
    if [ $dataset = synthetic ]; then ARGS=(--n-other 250 --epochs 300); else ARGS=(--n-other 1000 --epochs 1500); fi
    OUT=(--early-stopping --output $R/paper_r2_${dataset}_variants.csv)
    $PY benchmarks/paper_r2.py $dataset "${ARGS[@]}" "${OUT[@]}" --seeds 0 1 2 3 4 --n-shared 10 --n-private 10
    $PY benchmarks/paper_r2.py $dataset "${ARGS[@]}" "${OUT[@]}" --seeds 0 1 2 --n-shared 8 --objectives mmvae++ mmvae
    $PY benchmarks/paper_r2.py $dataset "${ARGS[@]}" "${OUT[@]}" --seeds 0 1 2 --cross-modal-private posterior \
      --objectives mmvae++
  done
  OUT=(--early-stopping --output $R/paper_r2_synthetic_variants.csv --epochs 300 --seeds 0 1 2)
  for n_other in 20 50 100; do
    $PY benchmarks/paper_r2.py synthetic --n-other $n_other "${OUT[@]}" --cross-modal-private posterior --objectives mmvae++
  done
  $PY benchmarks/paper_r2.py synthetic --n-other 250 "${OUT[@]}" --cross-modal-private posterior --objectives mmvae++ \
    --n-shared 10 --n-private 10
  $PY benchmarks/paper_r2.py synthetic --n-other 250 "${OUT[@]}" --dropout-rate 0.2 --objectives mmvae++ mmvae
  $PY benchmarks/paper_r2.py synthetic --n-other 250 "${OUT[@]}" --weight-decay 1e-3 --objectives mmvae++ mmvae
  $PY benchmarks/paper_r2.py synthetic --n-other 100 "${OUT[@]}" --stop-on cross-modal --keep-best --objectives mmvae++ mmvae
  OUT=(--early-stopping --output $R/paper_r2_cll_variants.csv --epochs 1500 --seeds 0 1 2)
  for n_other in 10 100; do
    $PY benchmarks/paper_r2.py cll --n-other $n_other "${OUT[@]}" --cross-modal-private posterior --objectives mmvae++
  done
  $PY benchmarks/paper_r2.py cll --n-other 1000 "${OUT[@]}" --stop-on cross-modal --keep-best
fi
if [ "$WHAT" = reference ] || [ "$WHAT" = all ]; then
  OUT=benchmarks/results/paper_r2_synthetic_reference_protocol.csv
  rm -f $OUT
  for n_other in 250 1000 50; do
    $PY benchmarks/paper_r2.py synthetic --n-other $n_other --epochs 100 --lr 1e-4 --paper-dispersion --seeds 0 1 2 \
      --output $OUT
  done
fi
[ -f benchmarks/results/paper_r2_synthetic.csv ] && [ -f benchmarks/results/paper_r2_cll.csv ] && $PY benchmarks/summarize_paper_r2.py || true
