"""Smoke test of the speed and scaling benchmarks (benchmarks/speed) on tiny simulated data."""

import sys
from pathlib import Path

import numpy as np
import pytest
import scvi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "speed"))
run_scaling = pytest.importorskip("run_scaling")
run_speed = pytest.importorskip("run_speed")
simulate = pytest.importorskip("simulate")


def test_simulated_counts_are_sparse_integer_and_paired():
    mdata = simulate.simulate_rna_atac(200, n_genes=100, n_peaks=400, seed=1)
    rna, atac = mdata.mod["rna"].X, mdata.mod["atac"].X
    assert rna.format == "csr"
    assert atac.format == "csr"
    assert 0.02 < rna.nnz / np.prod(rna.shape) < 0.2
    assert 0.005 < atac.nnz / np.prod(atac.shape) < 0.05
    assert np.array_equal(rna.data, np.round(rna.data))
    assert (mdata.mod["rna"].obs_names == mdata.mod["atac"].obs_names).all()


@pytest.mark.parametrize("dataset", ["rna_atac", "rna_protein"])
def test_speed_benchmark_times_spvi_and_the_scvi_tools_reference(dataset):
    simulate_data = simulate.simulate_rna_atac if dataset == "rna_atac" else simulate.simulate_rna_protein
    mdata = simulate_data(256, n_genes=60, **({"n_peaks": 200} if dataset == "rna_atac" else {"n_proteins": 10}))
    results = {}
    for objective in ("mmvae++", "mopoe", None):
        scvi.settings.seed = 0
        data = mdata.copy()
        model = (
            run_speed.spvi_model(data, dataset, objective) if objective else run_speed.reference_model(data, dataset)
        )
        results[objective] = run_speed.time_model(
            model, "cpu", epochs=1, precision="32-true", batch_size=64, load_sparse_tensor=False, steps=2
        )
        if objective == "mmvae++":
            bare = run_speed.time_bare_loop(model, batch_size=64, steps=2, epochs=2)
            assert bare["seconds_per_epoch"] > 0
            assert bare["ms_per_step"] == pytest.approx(1000 * bare["seconds_per_epoch"] / 4)
    for result in results.values():
        assert result["seconds_per_epoch"] > 0
        assert result["gflop_per_step"] > 0
        assert result["cells_per_second"] == pytest.approx(256 / result["seconds_per_epoch"])
    # MoPoE decodes every modality from three subsets, MMVAE++ from two experts: more matmul work per step
    assert results["mopoe"]["gflop_per_step"] > results["mmvae++"]["gflop_per_step"]


def test_scaling_benchmark_trains_from_memory_and_from_disk(tmp_path):
    path = tmp_path / "cells.h5mu"
    run_scaling.prepare(path, 300, n_genes=50, n_peaks=200)
    for mode in ("memory", "backed"):
        result = run_scaling.train(path, mode, "cpu", steps=2)
        assert result["n_cells"] == 300
        assert result["mode"] == mode
        assert result["ms_per_step"] > 0
        assert result["peak_rss_gib"] >= result["rss_after_imports_gib"] > 0


def test_ratios_to_the_reference_are_taken_within_rounds():
    # the machine is twice as slow in round 2: the per-round ratio stays 0.5, the ratio of medians would not
    spvi_rounds = [
        {"seconds_per_epoch": 1.0, "cpu_seconds_per_epoch": 1.0},
        {"seconds_per_epoch": 2.0, "cpu_seconds_per_epoch": 2.0},
    ]
    multivi_rounds = [
        {"seconds_per_epoch": 2.0, "cpu_seconds_per_epoch": 2.0},
        {"seconds_per_epoch": 4.0, "cpu_seconds_per_epoch": 4.0},
    ]
    multivi_rounds.append({"seconds_per_epoch": 2.0, "cpu_seconds_per_epoch": 2.0})
    spvi_rounds.append({"seconds_per_epoch": 3.0, "cpu_seconds_per_epoch": 3.0})
    rows = run_speed._combine_rounds(
        "mop", 10, {"spvi": spvi_rounds, "MULTIVI": multivi_rounds}, "MULTIVI", {"x": "no"}
    )
    spvi_row, multivi_row, error_row = rows
    assert spvi_row["rounds"] == 3
    assert spvi_row["cpu_seconds_per_epoch"] == 2.0  # median
    assert spvi_row["cpu_time_ratio_to_reference"] == 0.5  # median of 0.5, 0.5, 1.5
    assert multivi_row["ratio_to_reference"] == 1.0
    assert error_row == {"dataset": "mop", "n_cells": 10, "model": "x", "error": "no"}
