#!/usr/bin/env bash
# Speed and scaling benchmarks of spvi vs scvi-tools MULTIVI/TOTALVI (results in benchmarks/speed/results/).
# Usage: bash benchmarks/speed/run.sh [cpu|cuda]   (default: cuda when a GPU is visible, else cpu)
# CPU: about 30 minutes on an idle 2-core machine (the 1M-cell simulation alone takes ~3 min and ~8 GB).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-../../.venv/bin/python}"
DEVICE="${1:-$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
export PYTHONWARNINGS=ignore
if [ "$DEVICE" = cpu ]; then
  # SNARE-seq, every objective and MULTIVI, one and two torch threads; bare torch loop beside MMVAE++
  "$PYTHON" run_speed.py --device cpu --threads 1 --datasets mop --epochs 2 --rounds 8 \
    --output results/speed_cpu_fp32_b128_1thread_mop.csv
  "$PYTHON" run_speed.py --device cpu --threads 2 --datasets mop --epochs 2 --rounds 6 --objectives mmvae++ \
    --output results/speed_cpu_fp32_b128_2threads_mop.csv
  # simulated RNA + ATAC (2,000 genes, 20,000 peaks), 100k cells: epoch time from 40 minibatches
  "$PYTHON" run_speed.py --device cpu --threads 1 --datasets rna_atac --n-cells 100000 --steps 40 --epochs 2 --rounds 4 \
    --objectives mmvae++ --output results/speed_cpu_fp32_b128_1thread_100k.csv
  OMP_NUM_THREADS=1 "$PYTHON" run_scaling.py --device cpu --sizes 10000 100000 1000000 --n-genes 1000 \
    --n-peaks 5000 --steps 100 --output results/scaling_cpu.csv
else
  "$PYTHON" run_speed.py --device cuda --datasets mop rna_atac rna_protein --n-cells 20000 --epochs 2 \
    --output results/speed_cuda_fp32_b128.csv
  "$PYTHON" run_speed.py --device cuda --datasets mop rna_atac --n-cells 20000 --epochs 2 --batch-size 1024 \
    --output results/speed_cuda_fp32_b1024.csv
  "$PYTHON" run_speed.py --device cuda --datasets mop rna_atac --n-cells 20000 --epochs 2 --precision bf16-mixed \
    --output results/speed_cuda_bf16_b128.csv
  "$PYTHON" run_scaling.py --device cuda --sizes 10000 100000 1000000 --n-genes 1000 --n-peaks 5000 --steps 100 \
    --output results/scaling_cuda.csv
fi
"$PYTHON" summarize.py > /dev/null
