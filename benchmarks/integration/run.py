"""Integration benchmark: spvi's four objectives vs MULTIVI / TOTALVI and linear baselines, scored with scib-metrics.

Data sets (``../shared/data``): ``mop`` (SNARE-seq RNA + ATAC, 10,309 nuclei, 12 samples) and ``cite`` (PBMC
CITE-seq mosaic with RNA-only and protein-only cells). Per seed a random 20% of the paired cells is held out;
models are trained on the other cells and embed all cells. Rows (one per data set, method, variant, block and
seed) are appended to ``results/<dataset>.csv``, replacing earlier rows with the same key; ``summarize`` writes
``results/summary.md`` and one UMAP figure per data set. See ``README.md`` beside this file.

Usage::

    python benchmarks/integration/run.py mop --seeds 0 1 2 --epochs 100
    python benchmarks/integration/run.py mop --methods spvi --variant align0 --spvi-kwargs '{"alignment_weight": 0}'
    python benchmarks/integration/run.py cite --smoke
    python benchmarks/integration/run.py summarize
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this folder and benchmarks/ (cite_seq.py, baselines.py)

import mudata as md  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scvi  # noqa: E402
import torch  # noqa: E402
import umap  # noqa: E402
from loading import DATA_FILES, SHARED_DATA, Dataset, load_cite, load_mop, split  # noqa: E402
from methods import Fit, fit_linear, fit_multivi, fit_spvi, fit_totalvi, observed_target  # noqa: E402
from report import summarize  # noqa: E402
from scores import embedding_scores, finite_rows, imputation_scores  # noqa: E402

import spvi  # noqa: E402

RESULTS = HERE / "results"
KEY = ["dataset", "method", "variant", "block", "seed"]
METHODS = {"mop": ["spvi", "multivi", "baselines"], "cite": ["spvi", "totalvi", "baselines"]}
#: embeddings of seed 0 are saved only when they take less than this many bytes (float32)
MAX_EMBEDDING_BYTES = 5_000_000
SMOKE_CELLS = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=[*DATA_FILES, "summarize"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100, help="epochs of spvi, MULTIVI and TOTALVI")
    parser.add_argument("--objectives", nargs="+", default=list(spvi.OBJECTIVES), choices=list(spvi.OBJECTIVES))
    parser.add_argument("--spvi-kwargs", type=json.loads, default={}, help="JSON dict for spvi.SPVI(...)")
    parser.add_argument("--train-kwargs", type=json.loads, default={}, help="JSON dict for SPVI.train(...)")
    parser.add_argument("--variant", default="default", help="name written in every row (e.g. of the kwargs)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=["spvi", "multivi", "totalvi", "baselines"],
        help="methods to run (multivi: mop only, totalvi: cite only); default all of the data set's",
    )
    parser.add_argument(
        "--multivi-latent",
        nargs="+",
        type=latent_size,
        default=[None],
        help="MULTIVI n_latent values: 'default' (its own) or ints, e.g. --multivi-latent default 30",
    )
    parser.add_argument("--min-peak-frac", type=float, default=0.02, help="keep peaks open in >= this fraction")
    parser.add_argument("--no-mofa", action="store_true", help="skip MOFA+ (mop)")
    parser.add_argument("--mofa-factors", type=int, default=15)
    parser.add_argument("--mofa-iterations", type=int, default=100, help="cap (~1.9 s each on mop, 1 core)")
    parser.add_argument(
        "--fast-metrics",
        action="store_true",
        help="skip kBET and batch silhouette (their first call compiles for ~1 min)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", type=Path, help="the .h5mu file (default: ../shared/data/<dataset file>)")
    parser.add_argument("--results-dir", type=Path, help="default results/ (results/smoke/ with --smoke)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_CELLS} cells, 2 epochs, first seed and objective, no MOFA+, --fast-metrics",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.seeds, args.objectives = 2, args.seeds[:1], args.objectives[:1]
        args.no_mofa = args.fast_metrics = True
    args.results_dir = args.results_dir or (RESULTS / "smoke" if args.smoke else RESULTS)
    args.methods = args.methods or METHODS.get(args.dataset, [])
    args.code = code_version()
    return args


def latent_size(text: str) -> int | None:
    """``--multivi-latent`` value: ``None`` for ``"default"``, else a positive int."""
    if text == "default":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'default' or a positive int, got {text!r}")
    return int(text)


def code_version() -> str:
    """``git describe --always --dirty`` of the repository (``""`` outside git): the spvi code of a row."""
    command = ["git", "-C", str(HERE), "describe", "--always", "--dirty"]
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return ""


def load(args: argparse.Namespace) -> Dataset:
    """The data set named on the command line (subsampled with ``--smoke``)."""
    path = args.data or SHARED_DATA / DATA_FILES[args.dataset]
    n_cells = SMOKE_CELLS if args.smoke else None
    if args.dataset == "mop":
        return load_mop(path, args.min_peak_frac, n_cells)
    return load_cite(path, n_cells)


def fits(args: argparse.Namespace, dataset: Dataset, seed: int, train, test):
    """Fit every method of the run in turn (a generator, so that each is scored and saved before the next)."""
    if "spvi" in args.methods:
        for objective in args.objectives:
            yield fit_spvi(dataset, objective, seed, train, test, args.epochs, args.spvi_kwargs, args.train_kwargs)
    if "multivi" in args.methods and dataset.name == "mop":
        for n_latent in args.multivi_latent:
            yield fit_multivi(dataset, seed, train, test, args.epochs, n_latent)
    if "totalvi" in args.methods and dataset.name == "cite":
        yield fit_totalvi(dataset, seed, train, test, args.epochs)
    if "baselines" in args.methods:
        mofa = None if args.no_mofa else {"n_factors": args.mofa_factors, "iterations": args.mofa_iterations}
        yield from fit_linear(dataset, seed, train, test, mofa)


def fit_rows(fit: Fit, dataset: Dataset, seed: int, train, test, args: argparse.Namespace) -> list[dict]:
    """Result rows of one fit: one per embedding block and one for the imputation.

    Parameters
    ----------
    fit
        The fitted method.
    dataset
        The data set.
    seed
        Seed of the split and the model.
    train, test
        Training and held-out cell names.
    args
        Command-line arguments (``variant``, ``fast_metrics``, ``spvi_kwargs``, ``train_kwargs``, ``code``).

    Returns
    -------
    Rows with the key columns, ``train_seconds``, ``epochs``, ``n_train_cells``, ``kwargs`` (spvi's model and
    training arguments), ``code`` (:func:`code_version`), ``note`` and the metrics.
    """
    kwargs = {"model": args.spvi_kwargs, "train": args.train_kwargs}
    base = {
        "dataset": dataset.name,
        "method": fit.method,
        "variant": args.variant,
        "seed": seed,
        "train_seconds": fit.seconds,
        "epochs": fit.epochs,
        "n_train_cells": len(train),
        "kwargs": json.dumps(kwargs) if fit.method.startswith("spvi") else "",
        "code": args.code,
        "note": "; ".join(fit.notes),
    }
    is_train = dataset.mdata.obs_names.isin(train)
    obs = dataset.mdata.obs
    rows = [
        {**base, "block": block, **embedding_scores(z, obs, is_train, dataset.groups, args.fast_metrics)}
        for block, z in fit.blocks.items()
    ]
    if fit.imputed is not None:
        scores = imputation_scores(observed_target(dataset, test), fit.imputed)
        rows.append({**base, "block": f"{dataset.target} from {dataset.source}", **scores})
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a CSV, replacing earlier rows with the same key (data set, method, variant, block, seed).

    Parameters
    ----------
    path
        The CSV (created if missing).
    rows
        New rows.
    """
    table = pd.DataFrame(rows)
    if path.exists():
        table = pd.concat([pd.read_csv(path, keep_default_na=False, na_values=[""]), table], ignore_index=True)
    table["variant"] = table["variant"].astype(str)
    table.drop_duplicates(KEY, keep="last").to_csv(path, index=False)


def read_npz(path: Path, names: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays stored by an earlier run in an ``.npz`` (empty if there is none or it has other cells).

    Parameters
    ----------
    path
        The file.
    names
        Cell names of this run; the file's ``obs:names`` must match.

    Returns
    -------
    The stored arrays by key.
    """
    if not path.exists():
        return {}
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    return arrays if np.array_equal(arrays.get("obs:names"), names) else {}


def umap_coordinates(z: np.ndarray) -> np.ndarray:
    """UMAP (umap-learn, 15 neighbours, seed 0) of the cells with a finite embedding; ``NaN`` for the others.

    umap-learn directly: scanpy 1.11's neighbour graph fails on 10,000 cells with this scipy (``csr_array`` has no
    ``getnnz``).
    """
    keep = finite_rows(z)
    coordinates = np.full((len(z), 2), np.nan, dtype=np.float32)
    coordinates[keep] = umap.UMAP(n_neighbors=15, random_state=0).fit_transform(z[keep].astype(np.float32))
    return coordinates


def save_first_seed(args, dataset: Dataset, seed: int, fits_done: list[Fit]) -> None:
    """UMAPs of each method's main block (always) and all embeddings (only if small) of the run's first seed.

    Parameters
    ----------
    args
        Command-line arguments.
    dataset
        The data set.
    seed
        The run's first seed (in the file names, ``<dataset>_umap_seed<seed>.npz``).
    fits_done
        The fits of that seed.
    """
    names = np.asarray(dataset.mdata.obs_names).astype(str)
    colour = "availability" if dataset.groups else "batch"
    obs = {f"obs:{c}": dataset.mdata.obs[c].to_numpy().astype(str) for c in ("cell_type", colour)}
    obs["obs:names"] = names
    umaps = {
        f"{fit.method}|{args.variant}|{fit.main_block}": umap_coordinates(fit.blocks[fit.main_block])
        for fit in fits_done
        if fit.blocks
    }
    path = args.results_dir / f"{dataset.name}_umap_seed{seed}.npz"
    np.savez_compressed(path, **{**read_npz(path, names), **umaps, **obs})
    path = args.results_dir / f"{dataset.name}_embeddings_seed{seed}.npz"
    embeddings = read_npz(path, names) | {
        f"{fit.method}|{args.variant}|{block}": z.astype(np.float32)
        for fit in fits_done
        for block, z in fit.blocks.items()
    }
    size = sum(z.nbytes for key, z in embeddings.items() if not key.startswith("obs:"))
    if size < MAX_EMBEDDING_BYTES:
        np.savez_compressed(path, **{**embeddings, **obs})
    else:
        print(f"embeddings of seed 0 not saved: {size / 1e6:.1f} MB >= {MAX_EMBEDDING_BYTES / 1e6:.0f} MB (float32)")


def run(args: argparse.Namespace) -> None:
    """Fit, score and save every method for every seed, then write the summary."""
    dataset = load(args)
    print("\n".join(dataset.notes), flush=True)
    output = args.results_dir / f"{dataset.name}.csv"
    for seed in args.seeds:
        train, test = split(dataset, seed)
        done = []
        for fit in fits(args, dataset, seed, train, test):
            rows = fit_rows(fit, dataset, seed, train, test, args)
            append_rows(output, rows)
            printed = pd.DataFrame(rows).drop(columns=["dataset", "kwargs", "code", "note"])
            print(printed.to_string(index=False), flush=True)
            done.append(fit)
        if seed == args.seeds[0]:
            save_first_seed(args, dataset, seed, done)
    summarize(args.results_dir)


def main(argv: list[str] | None = None) -> None:
    """Entry point: a data set run or ``summarize``."""
    args = parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.dataset == "summarize":
        summarize(args.results_dir)
        return
    torch.set_num_threads(args.threads)
    # numba's default OpenMP thread pool (started by kBET's pynndescent and by UMAP) made every later torch
    # training step ~50x slower on the 2-core machine; its own workqueue pool does not interfere
    numba.config.THREADING_LAYER = "workqueue"
    warnings.filterwarnings("ignore")
    md.set_options(pull_on_update=False)
    scvi.settings.verbosity = 30
    run(args)


if __name__ == "__main__":
    main()
