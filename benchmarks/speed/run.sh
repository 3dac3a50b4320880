#!/usr/bin/env bash
# Speed and scaling benchmarks of spvi vs scvi-tools MULTIVI/TOTALVI (results in benchmarks/speed/results/).
# Usage: bash benchmarks/speed/run.sh [cpu|cuda]   (default: cuda when a GPU is visible, else cpu)
# CPU: about 10 minutes for the speed table and 25 for the scaling table on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-../../.venv/bin/python}"
DEVICE="${1:-$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
export PYTHONWARNINGS=ignore
if [ "$DEVICE" = cpu ]; then
  # one torch thread: the CPU-time columns stay comparable on a shared machine (no thread oversubscription)
  "$PYTHON" run_speed.py --device cpu --threads 1 --n-cells 20000 --epochs 2 --output results/speed_cpu_fp32_b128_1thread.csv
else
  "$PYTHON" run_speed.py --device cuda --n-cells 20000 --epochs 2 --output results/speed_cuda_fp32_b128.csv
fi
if [ "$DEVICE" = cuda ]; then
  "$PYTHON" run_speed.py --device cuda --n-cells 20000 --epochs 2 --batch-size 1024 \
    --output results/speed_cuda_fp32_b1024.csv
  "$PYTHON" run_speed.py --device cuda --n-cells 20000 --epochs 2 --precision bf16-mixed \
    --output results/speed_cuda_bf16_b128.csv
fi
"$PYTHON" run_scaling.py --device "$DEVICE" --sizes 10000 50000 200000 --steps 100 --output "results/scaling_${DEVICE}.csv"
"$PYTHON" summarize.py > /dev/null
