"""Time per training step and peak memory of spvi (MMVAE++) on 10k, 50k and 200k simulated RNA+ATAC cells.

Each size is simulated and written to an .h5mu once; training then runs in a fresh process per size and
mode, so that the peak resident memory (ru_maxrss) is that of training alone: ``memory`` reads the file
into memory, ``backed`` opens it on disk (``mudata.read_h5mu(path, backed=True)``). ``obs_tables_gib`` is
the part of the memory that grows with the cells even when backed: the per-cell metadata (``obs`` tables
with their cell names) that AnnData and MuData always hold in memory. Minibatches are drawn
at random over all cells; ``--steps`` minibatches are timed and the epoch time is steps-per-epoch times the
measured time per step.

Usage: python benchmarks/speed/run_scaling.py [--device cpu|cuda] [--sizes 10000 50000 200000] [--steps 200]
       [--n-genes 2000] [--n-peaks 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

RESULTS = Path(__file__).parent / "results"
BATCH_SIZE = 128


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _obs_gib(mdata) -> float:
    """In-memory size of the per-cell metadata (``obs`` tables and names), which AnnData keeps in memory when backed."""
    tables = [mdata.obs, *(modality.obs for modality in mdata.mod.values())]
    return sum(int(table.memory_usage(index=True, deep=True).sum()) for table in tables) / 2**30


def prepare(path: Path, n_cells: int, n_genes: int, n_peaks: int) -> None:
    """Simulate ``n_cells`` RNA+ATAC cells and write them to ``path`` (in a process of its own)."""
    import anndata
    from simulate import simulate_rna_atac

    anndata.settings.allow_write_nullable_strings = True  # pandas >= 3 makes string indices nullable
    simulate_rna_atac(n_cells, n_genes=n_genes, n_peaks=n_peaks).write(path)


def train(path: Path, mode: str, device: str, steps: int) -> dict:
    """Train MMVAE++ for ``steps`` minibatches from ``path``; time per step and peak memory."""
    import mudata as md
    import scvi
    from run_speed import EpochTimer

    import spvi

    md.set_options(pull_on_update=False)
    rss_before = _peak_rss_gib()
    mdata = md.read_h5mu(path, backed=mode == "backed")
    spvi.SPVI.setup_mudata(mdata, likelihoods={"rna": "nb", "atac": "bernoulli"})
    scvi.settings.seed = 0
    model = spvi.SPVI(mdata, n_shared=10, n_private=5)
    timer = EpochTimer()
    model.train(
        max_epochs=1,
        batch_size=BATCH_SIZE,
        train_size=1.0,
        limit_train_batches=steps,
        limit_val_batches=0,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    seconds_per_step = timer.seconds[-1] / steps
    n_cells = mdata.n_obs
    return {
        "n_cells": n_cells,
        "mode": mode,
        "ms_per_step": 1000 * seconds_per_step,
        "cpu_ms_per_step": 1000 * timer.cpu_seconds[-1] / steps,
        "seconds_per_epoch": seconds_per_step * np.ceil(n_cells / BATCH_SIZE),
        "peak_rss_gib": _peak_rss_gib(),
        "obs_tables_gib": _obs_gib(mdata),
        "rss_after_imports_gib": rss_before,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
        "file_gib": path.stat().st_size / 2**30,
    }


def _run(*args: str) -> str:
    completed = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return completed.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 200000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--n-peaks", type=int, default=20000)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--worker", nargs=3, metavar=("ACTION", "PATH", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        action, path, arg = args.worker
        if action == "prepare":
            prepare(Path(path), int(arg), args.n_genes, args.n_peaks)
        else:
            print(json.dumps(train(Path(path), arg, args.device, args.steps)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_cells in args.sizes:
            path = Path(tmp) / f"rna_atac_{n_cells}.h5mu"
            start = time.perf_counter()
            sizes = ("--n-genes", str(args.n_genes), "--n-peaks", str(args.n_peaks))
            _run(*sizes, "--worker", "prepare", str(path), str(n_cells))
            print(f"simulated {n_cells} cells in {time.perf_counter() - start:.0f} s", flush=True)
            for mode in ("memory", "backed"):
                output = _run("--device", args.device, "--steps", str(args.steps), "--worker", "train", str(path), mode)
                rows.append(
                    {**json.loads(output.strip().splitlines()[-1]), "n_genes": args.n_genes, "n_peaks": args.n_peaks}
                )
                print(rows[-1], flush=True)
            path.unlink()
    table = pd.DataFrame(rows)
    table.insert(0, "device", torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu")
    output = args.output or RESULTS / f"scaling_{args.device}.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
