#!/usr/bin/env bash
# Synthetic CRISPR screen (benchmarks/perturbation.py): share of each knock-down recovered from the guides alone.
# Run from the repository root after `bash scripts/setup.sh`:
#   bash benchmarks/run_perturbation.sh [sweep|ablations|convergence|all]    (CPU, one torch thread; runtimes in benchmarks/README.md)
# "sweep": the four objectives, per-guide mean and ridge; 10 private programmes at knock-downs of 1 and 2 log units,
#   2 programmes at 2 log units; 3 seeds.
# "ablations": MMVAE++ (and MMVAE) with one model option or the training length changed, 10 programmes.
# "convergence": MMVAE++ and MMVAE with alignment_weight=0 and max_kl_weight=0.1, 400 epochs evaluated after 100,
#   200, 300 and 400 epochs of the same run, 10 programmes, 3 seeds; recovery also against the noise-free truth;
#   then the same with the KL weight 0.1 on z_shared only (shared_kl_weight=0.1, max_kl_weight=1), and MMVAE++ with
#   it for 600 epochs (evaluated after 500 and 600). `python benchmarks/perturbation_guides.py` reads the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHAT=${1:-all}
R=benchmarks/results
if [ "$WHAT" = sweep ] || [ "$WHAT" = all ]; then
  $PY benchmarks/perturbation.py --programmes 10 --effects 1 2
  $PY benchmarks/perturbation.py --programmes 2 --effects 2 --append
fi
if [ "$WHAT" = ablations ] || [ "$WHAT" = all ]; then
  OUT=(--programmes 10 --no-baselines --output $R/perturbation_ablations.csv)
  rm -f $R/perturbation_ablations.csv
  $PY benchmarks/perturbation.py "${OUT[@]}" --effects 1 2 --objectives mmvae++ mmvae --alignment-weight 0 \
    --max-kl-weight 0.1
  for variant in "" "--alignment-weight 0" "--max-kl-weight 0.1" "--downstream-size 30" \
    "--downstream-size 30 --alignment-weight 0" "--guide-likelihood bernoulli" "--guide-likelihood poisson" \
    "--guide-input binary" "--no-marginal-dispersion" "--cross-modal-private posterior"; do
    # shellcheck disable=SC2086
    $PY benchmarks/perturbation.py "${OUT[@]}" --effects 2 --seeds 0 --objectives mmvae++ $variant --append
  done
  $PY benchmarks/perturbation.py "${OUT[@]}" --effects 2 --seeds 0 --objectives mmvae++ --alignment-weight 0 \
    --max-kl-weight 0.01 --append
  # training length: the defaults and the two changes at 200 epochs (400 = scvi-tools' heuristic for 1,600 cells)
  $PY benchmarks/perturbation.py "${OUT[@]}" --effects 1 2 --objectives mmvae++ mmvae --alignment-weight 0 \
    --max-kl-weight 0.1 --epochs 200 --append
  for epochs in 200 400; do
    $PY benchmarks/perturbation.py "${OUT[@]}" --effects 2 --seeds 0 --objectives mmvae++ --epochs $epochs --append
  done
fi
if [ "$WHAT" = convergence ] || [ "$WHAT" = all ]; then
  $PY benchmarks/perturbation.py --programmes 10 --effects 1 2 --objectives mmvae++ mmvae --alignment-weight 0 \
    --max-kl-weight 0.1 --epochs 400 --eval-epochs 100 200 300 --output $R/perturbation_convergence.csv
  $PY benchmarks/perturbation.py --programmes 10 --effects 1 2 --objectives mmvae++ mmvae --alignment-weight 0 \
    --shared-kl-weight 0.1 --epochs 400 --eval-epochs 100 200 300 --no-baselines --append \
    --output $R/perturbation_convergence.csv
  for effect in 2 1; do
    $PY benchmarks/perturbation.py --programmes 10 --effects $effect --objectives mmvae++ --alignment-weight 0 \
      --shared-kl-weight 0.1 --epochs 600 --eval-epochs 500 --no-baselines --append \
      --output $R/perturbation_convergence.csv
  done
fi
