"""Smoke tests of the benchmark scripts (1-2 epochs, one seed).

The scripts run in this process (their ``main`` with a patched ``sys.argv``) so that the heavy imports are paid
once; each writes its CSV, markdown summary and figure into a temporary directory.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("mofapy2")


def run_script(name: str, monkeypatch, tmp_path: Path, *extra: str) -> pd.DataFrame:
    module = importlib.import_module(name)
    output = tmp_path / f"{name}.csv"
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--smoke", "--output", str(output), *extra])
    module.main()
    assert (tmp_path / f"{name}_summary.md").read_text().startswith("# ")
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    return pd.read_csv(output)


def test_tcga_smoke(monkeypatch, tmp_path, tcga_path):
    table = run_script("tcga", monkeypatch, tmp_path, "--data", str(tcga_path))
    expected = {"method", "objective", "seed", "source", "target", "r2", "auc_subtype", "train_seconds"}
    assert expected <= set(table.columns)
    assert set(table["method"]) == {"spvi", "mofa+", "mofa+ refit", "ridge", "cca"}
    assert set(table.loc[table["method"] == "spvi", "objective"]) == {"mmvae++", "mmvae", "mopoe", "mvae"}
    # every ordered pair of the three modalities plus rna+mirna -> protein, for every method
    assert table.groupby(["method", "objective"], dropna=False).size().eq(7).all()
    assert np.isfinite(table["r2"]).all()
    with_latent = table["method"].isin(["spvi", "mofa+", "mofa+ refit"])
    assert table.loc[with_latent, "auc_subtype"].between(0, 1).all()
    spvi_rows = table[table["method"] == "spvi"]
    assert (spvi_rows["n_partial"] == 70).all()
    assert spvi_rows["partial_embedding_finite"].astype(bool).all()
    assert spvi_rows["partial_protein_finite"].astype(bool).all()


def test_cite_seq_smoke(monkeypatch, tmp_path, cite_path):
    table = run_script("cite_seq", monkeypatch, tmp_path, "--data", str(cite_path), "--objectives", "mmvae++", "mvae")
    expected = {"method", "objective", "seed", "embedding", "knn_accuracy", "silhouette", "protein_pearson"}
    assert expected <= set(table.columns)
    embeddings = table[table["knn_accuracy"].notna()]
    assert set(embeddings["embedding"]) == {"z_shared", "private_rna", "private_protein", "totalvi latent"}
    assert embeddings["knn_accuracy"].between(0, 1).all()
    assert embeddings["silhouette"].between(-1, 1).all()
    predictions = table[table["protein_pearson"].notna()]
    assert set(predictions["method"]) == {"spvi", "totalvi", "ridge"}
    assert predictions["protein_pearson"].between(-1, 1).all()
    assert len(predictions) == 2 + 2 + 1  # two objectives, two TOTALVI variants, ridge


def test_semi_supervised_smoke(monkeypatch, tmp_path, cll_path):
    table = run_script("semi_supervised", monkeypatch, tmp_path, "--data", str(cll_path))
    columns = ["auc_zshared_lr", "auc_label_head", "auc_supervised"]
    assert {"objective", "seed", "label_fraction", "n_labelled", *columns} <= set(table.columns)
    assert table["label_fraction"].tolist() == [0.1, 0.5, 1.0]
    assert table["n_labelled"].is_monotonic_increasing
    assert table[columns].apply(lambda c: c.between(0, 1)).all().all()


def test_paper_r2_smoke(monkeypatch, tmp_path):
    module = importlib.import_module("paper_r2")
    output = tmp_path / "paper_r2_synthetic.csv"
    arguments = ["synthetic", "--n-obs", "150", "--n-other", "20", "--seeds", "0", "--epochs", "2"]
    arguments += ["--objectives", "mmvae++", "mvae", "--early-stopping", "--baselines", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", ["paper_r2.py", *arguments])
    module.main()
    table = pd.read_csv(output)
    assert set(table["method"]) == {"spvi", "mofa+", "ridge", "cca"}
    # two directions for each of the two objectives and the three baselines
    assert len(table) == 2 * 5
    assert np.isfinite(table["r2_shared"]).all()
    spvi_rows = table[table["method"] == "spvi"]
    recovery = [c for c in table if c.startswith("r2_true_")]
    assert len(recovery) == 9  # 3 true blocks x 3 learned blocks
    assert np.isfinite(spvi_rows[recovery].to_numpy()).all()
    assert spvi_rows["auc_shared"].between(0, 1).all()
    assert (spvi_rows["variant"].fillna("") == "").all()
    # a second run, a model and training variant, appends to the same file and is named in "variant"
    variant = ["--stop-on", "cross-modal", "--keep-best", "--cross-modal-private", "posterior"]
    without_baselines = [a for a in arguments if a != "--baselines"]
    monkeypatch.setattr(sys, "argv", ["paper_r2.py", *without_baselines, *variant])
    module.main()
    second = pd.read_csv(output).iloc[len(table) :]
    assert len(second) == 2 * 2
    assert set(second["variant"]) == {"stop on cross-modal NLL, best epoch, cross_modal_private=posterior"}


def test_integration_benchmark_smoke(tmp_path, cite_path):
    pytest.importorskip("scib_metrics")
    pytest.importorskip("muon")
    spec = importlib.util.spec_from_file_location("integration_run", BENCHMARKS / "integration" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mop_path = cite_path.parent / "mop_snareseq_rna_atac.h5mu"
    for dataset, path in (("cite", cite_path), ("mop", mop_path)):
        module.main([dataset, "--smoke", "--data", str(path), "--results-dir", str(tmp_path)])
    expected = {
        "cite": {
            "spvi mmvae++": {"shared", "private_rna", "private_protein", "all", "protein from rna"},
            "totalvi": {"all", "protein from rna"},
            "pca": {"all"},
            "ridge": {"protein from rna"},
        },
        "mop": {
            "spvi mmvae++": {"shared", "private_rna", "private_atac", "all", "rna from atac"},
            "multivi": {"all", "rna from atac"},
            "pca": {"all"},
            "lsi": {"all"},
            "pca+lsi": {"all"},
            "ridge": {"rna from atac"},
        },
    }
    scib = ["nmi", "ari", "silhouette_label", "isolated_labels", "clisi", "ilisi", "graph_connectivity", "total"]
    for dataset, blocks in expected.items():
        table = pd.read_csv(tmp_path / f"{dataset}.csv")
        assert table.groupby("method")["block"].agg(set).to_dict() == blocks
        assert (table["seed"] == 0).all()
        assert (table["variant"] == "default").all()
        imputation = table["pearson"].notna()
        assert table.loc[imputation, "pearson"].between(-1, 1).all()
        embeddings = table[~imputation]
        assert np.isfinite(embeddings[[*scib, "knn_accuracy", "n_cells"]].to_numpy()).all()
        assert embeddings[["nmi", "ari", "knn_accuracy"]].apply(lambda c: c.between(-1, 1)).all().all()
        assert (tmp_path / f"{dataset}_umap.png").stat().st_size > 10_000
    cite = pd.read_csv(tmp_path / "cite.csv").set_index(["method", "block"])
    # z_shared embeds all 600 subsampled cells, each private block only the cells with its modality
    assert cite.loc[("spvi mmvae++", "shared"), "n_cells"] == 600
    assert cite.loc[("spvi mmvae++", "private_rna"), "n_cells"] < 600
    single = ["ratio_rna_only", "ratio_protein_only", "transfer_accuracy_rna_only", "transfer_accuracy_protein_only"]
    assert np.isfinite(cite.loc[("spvi mmvae++", "shared"), single].to_numpy(dtype=float)).all()
    assert (tmp_path / "summary.md").read_text().count("## ") == 2


def test_query_mapping_smoke(tmp_path):
    module = importlib.import_module("query_mapping")
    table = module.main(["--smoke", "--output", str(tmp_path / "query_mapping.csv")])
    assert (tmp_path / "query_mapping_summary.md").read_text().startswith("# Query mapping")
    assert set(table["method"]) == {"surgery", "no surgery (query as p3_0)", "de novo (reference + query)"}
    assert set(table["query_modalities"]) == {"rna+protein", "rna only", "protein only"}
    assert table["accuracy"].between(0, 1).all()
    assert (table["n_query"] == 400).all()


def test_perturbation_smoke(monkeypatch, tmp_path):
    module = importlib.import_module("perturbation")
    output = tmp_path / "perturbation.csv"
    monkeypatch.setattr(sys, "argv", ["perturbation.py", "--smoke", "--output", str(output)])
    module.main()
    table = pd.read_csv(output)
    # 6 guides, one non-targeting: 5 rows per method
    assert table.groupby(["method", "objective"], dropna=False).size().eq(5).all()
    assert set(table["method"]) == {"spvi", "per-guide mean", "ridge", "ridge, penalty per gene"}
    assert set(table["objective"].dropna()) == {"mmvae++", "mmvae", "mopoe", "mvae"}
    assert (table["observed_lfc"] < 0).all()  # every simulated knock-down is seen in the held-out cells
    columns = ["recovered", "downstream_recovered", "recovered_truth", "downstream_recovered_truth"]
    assert np.isfinite(table[columns].to_numpy()).all()
    # the noise-free knock-down of the target is a decrease, smaller than the effect on the log1p scale
    assert ((table["true_lfc"] < 0) & (table["true_lfc"] > -table["true_effect"])).all()
    # the group mean of the training cells recovers most of each knock-down on held-out cells
    per_guide = table[table["method"] == "per-guide mean"]
    assert per_guide["recovered"].mean() > 0.6
    assert per_guide["recovered_truth"].mean() > 0.6
    spvi_rows = table[table["method"] == "spvi"]
    assert spvi_rows[["auc_rna", "auc_target"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table["variant"] == "2 epochs").all()  # the smoke run's training length is not the default
    summary = (tmp_path / "perturbation_summary.md").read_text()
    assert summary.startswith("# ")
    assert summary.count("| 2 epochs ") == 7  # three baselines and four objectives
    # an ablation appends to the same table under its own variant name
    arguments = ["--smoke", "--output", str(output), "--append", "--no-baselines", "--objectives", "mmvae++"]
    monkeypatch.setattr(sys, "argv", ["perturbation.py", *arguments, "--alignment-weight", "0", "--eval-epochs", "1"])
    module.main()
    appended = pd.read_csv(output).iloc[len(table) :]
    assert len(appended) == 10  # evaluated after 1 and after 2 epochs of the same run
    assert set(appended["variant"]) == {"alignment_weight=0, 1 epochs", "alignment_weight=0, 2 epochs"}
