"""Training speed of spvi (each objective) against scvi-tools MULTIVI (RNA+ATAC) and TOTALVI (RNA+protein).

Same data, batch size, hidden width and depth for every model: simulated RNA+ATAC or RNA+protein counts
(``--n-cells``), or the SNARE-seq mouse motor cortex (``mop``: 10,308 nuclei, 1,677 genes, 775 peaks open in
>= 2% of nuclei, 12 samples as batch covariate, as in the integration benchmark). Seconds per epoch are
the median over ``--epochs`` epochs after the first (which warms up); with ``--rounds`` every model is timed that
many times in turn (the first objective next to MULTIVI/TOTALVI, every other round in reverse order) and the
medians are reported, with each ratio to MULTIVI/TOTALVI taken within a round (a shared machine's speed drifts;
models timed back to back see nearly the same machine). With ``--steps`` each epoch stops after
that many minibatches and the epoch time is extrapolated from the time per step. For spvi's objectives in
``--bare-loop`` the same module is also trained by a bare torch loop (same minibatches from the same data
loader, the same fused Adam, no Lightning), to measure what the Lightning training plan adds. Also reports
the matmul FLOPs of one training step (counted by ``torch.utils.flop_counter``, forward + backward), the
achieved FLOP rate, and the peak matmul rate of torch on the same device in the same run.

Usage: python benchmarks/speed/run_speed.py [--device cpu|cuda] [--datasets mop rna_atac rna_protein]
       [--n-cells 20000] [--epochs 2] [--rounds 1] [--steps N] [--batch-size 128] [--threads 1]
       [--precision 32-true|bf16-mixed] [--load-sparse-tensor] [--bare-loop mmvae++]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scvi
import torch
from lightning.pytorch.callbacks import Callback
from simulate import simulate_rna_atac, simulate_rna_protein
from torch.utils.flop_counter import FlopCounterMode

import spvi

RESULTS = Path(__file__).parent / "results"
INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
N_HIDDEN, N_LAYERS, N_LATENT = 128, 1, 20


class EpochTimer(Callback):
    """Wall-clock and process CPU seconds of each training epoch (device work finished before the clocks stop).

    On a shared machine the wall clock also counts time the process waited for a core; the process CPU
    time does not, so it is the fairer comparison there (for CPU training).
    """

    def __init__(self):
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


def peak_matmul_flops(device: str, n: int = 4096, repeats: int = 10) -> float:
    """Achieved FLOP/s of a large float32 square matmul (the machine's practical limit for these models)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def step_flops(model, batch_size: int) -> float:
    """Matmul FLOPs of one training step (forward and backward) on one minibatch."""
    batch = next(iter(model._make_data_loader(adata=model.adata, batch_size=batch_size, shuffle=False)))
    batch = {key: value.to(model.device) for key, value in batch.items()}
    model.module.train()
    with FlopCounterMode(display=False) as counter:
        *_, loss_output = model.module(batch)
        loss_output.loss.backward()
    model.module.zero_grad()
    return float(counter.get_total_flops())


def load_dataset(dataset: str, n_cells: int) -> md.MuData:
    """Counts in ``.X`` of ``rna`` and ``atac``/``protein``; ``obs["batch"]`` for ``mop``."""
    if dataset == "mop":
        sys.path.insert(0, str(INTEGRATION))
        sys.path.insert(0, str(INTEGRATION.parent))
        from loading import DATA_FILES, SHARED_DATA, load_mop

        mdata = load_mop(SHARED_DATA / DATA_FILES["mop"], min_peak_frac=0.02).mdata
        for modality in mdata.mod.values():
            modality.X = modality.layers["counts"]
        return mdata
    return simulate_rna_atac(n_cells) if dataset == "rna_atac" else simulate_rna_protein(n_cells)


def _batch_key(mdata: md.MuData) -> str | None:
    return "batch" if "batch" in mdata.obs else None


def spvi_model(mdata: md.MuData, dataset: str, objective: str):
    likelihoods = (
        {"rna": "nb", "protein": "nbmixture"} if dataset == "rna_protein" else {"rna": "nb", "atac": "bernoulli"}
    )
    spvi.SPVI.setup_mudata(mdata, likelihoods=likelihoods, batch_key=_batch_key(mdata))
    n_private = (N_LATENT - 10) // 2
    return spvi.SPVI(mdata, n_shared=10, n_private=n_private, objective=objective, n_hidden=N_HIDDEN, n_layers=N_LAYERS)


def reference_model(mdata: md.MuData, dataset: str):
    if dataset != "rna_protein":
        scvi.model.MULTIVI.setup_mudata(
            mdata, batch_key=_batch_key(mdata), modalities={"rna_layer": "rna", "atac_layer": "atac"}
        )
        return scvi.model.MULTIVI(
            mdata,
            n_genes=mdata.mod["rna"].n_vars,
            n_regions=mdata.mod["atac"].n_vars,
            n_hidden=N_HIDDEN,
            n_latent=N_LATENT,
            n_layers_encoder=N_LAYERS,
            n_layers_decoder=N_LAYERS,
            gene_likelihood="nb",
        )
    scvi.model.TOTALVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "protein"})
    return scvi.model.TOTALVI(
        mdata, n_latent=N_LATENT, n_hidden=N_HIDDEN, n_layers_encoder=N_LAYERS, n_layers_decoder=N_LAYERS
    )


def time_model(
    model,
    device: str,
    epochs: int,
    precision: str,
    batch_size: int,
    load_sparse_tensor: bool,
    steps: int | None = None,
) -> dict:
    timer = EpochTimer()
    accelerator = "gpu" if device == "cuda" else "cpu"
    # spvi takes load_sparse_tensor as a train() argument; MULTIVI's and TOTALVI's train() would hand it to the
    # Lightning Trainer, so for them it goes through their data splitter arguments
    sparse_kwargs = {}
    if load_sparse_tensor:
        if isinstance(model, scvi.model.MULTIVI | scvi.model.TOTALVI):
            sparse_kwargs = {"datasplitter_kwargs": {"load_sparse_tensor": True}}
        else:
            sparse_kwargs = {"load_sparse_tensor": True}
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        train_size=1.0,
        early_stopping=False,
        limit_val_batches=0,
        accelerator=accelerator,
        devices=1,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
        limit_train_batches=steps,
        **sparse_kwargs,
    )
    n_cells = model.adata.n_obs
    n_steps = int(np.ceil(n_cells / batch_size))
    scale = n_steps / min(steps, n_steps) if steps else 1.0  # epochs cut at ``steps`` minibatches
    seconds = _after_warmup(timer.seconds) * scale
    flops = step_flops(model, batch_size)
    return {
        "seconds_per_epoch": seconds,
        "cpu_seconds_per_epoch": _after_warmup(timer.cpu_seconds) * scale,
        "cells_per_second": n_cells / seconds,
        "ms_per_step": 1000 * seconds / n_steps,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops * n_steps / seconds / 1e9,
    }


def _after_warmup(per_epoch: list[float]) -> float:
    """Median of the epochs after the first (the last epoch when only two ran)."""
    return float(np.median(per_epoch[1:])) if len(per_epoch) > 1 else per_epoch[0]


def time_bare_loop(model, batch_size: int, steps: int | None, epochs: int) -> dict:
    """Seconds per epoch of a bare torch loop over the model's module: its data loader, fused Adam, no Lightning.

    ``epochs - 1`` timed passes over ``min(steps, steps per epoch)`` minibatches after 5 warm-up steps (the median
    pass is reported); KL weight 1.
    """
    module = model.module.train()
    optimizer = model._training_plan_cls(module).get_optimizer_creator()(module.parameters())
    loader = model._make_data_loader(adata=model.adata, batch_size=batch_size, shuffle=True)
    n_steps = len(loader)
    n_timed = min(steps or n_steps, n_steps)

    def run(n: int) -> None:
        for _, batch in zip(range(n), loader, strict=False):
            loss = module(batch, loss_kwargs={"kl_weight": 1.0})[2].loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    run(5)
    wall, cpu = [], []
    for _ in range(max(epochs - 1, 1)):
        start, cpu_start = time.perf_counter(), time.process_time()
        run(n_timed)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    scale = n_steps / n_timed
    seconds = float(np.median(wall)) * scale
    return {
        "seconds_per_epoch": seconds,
        "cpu_seconds_per_epoch": float(np.median(cpu)) * scale,
        "cells_per_second": model.adata.n_obs / seconds,
        "ms_per_step": 1000 * seconds / n_steps,
    }


def _combine_rounds(
    dataset: str, n_cells: int, rounds: dict[str, list[dict]], reference: str, errors: dict[str, str]
) -> list[dict]:
    """One row per model: the median over rounds of each measurement and of the per-round time ratios.

    A ratio to the reference model (MULTIVI/TOTALVI) is taken within each round, where both ran back to back,
    so that a machine that speeds up or slows down between rounds (a shared host) moves both alike.
    """
    rows = []
    for name, results in rounds.items():
        row = {"dataset": dataset, "n_cells": n_cells, "model": name, "rounds": len(results)}
        row.update(pd.DataFrame(results).median().to_dict())
        reference_results = rounds.get(reference)
        if reference_results is not None:
            for column, ratio in (
                ("seconds_per_epoch", "ratio_to_reference"),
                ("cpu_seconds_per_epoch", "cpu_time_ratio_to_reference"),
            ):
                row[ratio] = float(
                    np.median([r[column] / q[column] for r, q in zip(results, reference_results, strict=True)])
                )
        rows.append(row)
    rows += [{"dataset": dataset, "n_cells": n_cells, "model": name, "error": error} for name, error in errors.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n-cells", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=1, help="times every model is timed, in turn (medians and per-round ratios)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--load-sparse-tensor", action="store_true", help="send minibatches as sparse tensors, densify on the device"
    )
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. 32-true, bf16-mixed")
    parser.add_argument("--objectives", nargs="+", default=list(spvi.OBJECTIVES))
    parser.add_argument("--datasets", nargs="+", default=["mop", "rna_atac", "rna_protein"])
    parser.add_argument("--steps", type=int, default=None, help="minibatches per timed epoch (default: all)")
    parser.add_argument(
        "--bare-loop", nargs="*", default=["mmvae++"], help="spvi objectives also timed in a bare torch loop"
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    md.set_options(pull_on_update=False)
    torch.set_float32_matmul_precision("highest")

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}"
    if args.device == "cpu":
        device_name += f", {torch.get_num_threads()} torch thread(s)"
    peak = peak_matmul_flops(args.device)
    print(f"device {device_name}: peak float32 matmul {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for dataset in args.datasets:
        mdata = load_dataset(dataset, args.n_cells)
        reference = "TOTALVI" if dataset == "rna_protein" else "MULTIVI"
        # the reference next to the first objective, and every other round in reverse order (A B B A): the first
        # objective and the reference always run back to back, and a drift of the machine's speed cancels
        candidates = [(f"spvi {objective}", objective) for objective in args.objectives]
        candidates.insert(1, (reference, None))
        models = {}
        for name, objective in candidates:
            scvi.settings.seed = 0
            data = mdata.copy()
            models[name] = (
                objective,
                spvi_model(data, dataset, objective) if objective else reference_model(data, dataset),
            )
        rounds: dict[str, list[dict]] = {}  # model -> one result per round
        errors: dict[str, str] = {}
        for round_index in range(args.rounds):
            order = list(models.items())
            for name, (objective, model) in order if round_index % 2 == 0 else reversed(order):
                if name in errors:
                    continue
                try:
                    result = time_model(
                        model,
                        args.device,
                        args.epochs,
                        args.precision,
                        args.batch_size,
                        args.load_sparse_tensor,
                        args.steps,
                    )
                except RuntimeError as error:  # e.g. a model that does not support the requested precision
                    errors[name] = str(error).splitlines()[0]
                    continue
                rounds.setdefault(name, []).append(result)
                print(dataset, f"round {round_index}", name, result, flush=True)
                if objective in args.bare_loop:
                    bare = time_bare_loop(model, args.batch_size, args.steps, args.epochs)
                    result["lightning_over_bare_loop"] = result["cpu_seconds_per_epoch"] / bare["cpu_seconds_per_epoch"]
                    rounds.setdefault(f"{name}, bare torch loop", []).append(bare)
                    print(dataset, f"round {round_index}", name, "bare loop", bare, flush=True)
        rows += _combine_rounds(dataset, mdata.n_obs, rounds, reference, errors)
    table = pd.DataFrame(rows)
    table["flop_efficiency"] = table["achieved_gflops"] * 1e9 / peak
    table.insert(0, "device", device_name)
    table.insert(1, "precision", args.precision)
    table.insert(2, "batch_size", args.batch_size)
    table.insert(3, "sparse_minibatches", args.load_sparse_tensor)
    table["peak_matmul_gflops"] = peak / 1e9
    table["steps_timed"] = args.steps
    output = args.output or RESULTS / f"speed_{args.device}.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
