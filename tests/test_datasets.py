import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.neighbors import KNeighborsRegressor

from spvi.datasets import cll, pbmc_cite_mosaic, synthetic_gp, synthetic_perturbation
from spvi.metrics import r2_per_feature


def _knn_r2(inputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean held-out R² of a kNN regression of ``targets`` on ``inputs`` (first half train, second half test)."""
    half = len(inputs) // 2
    predicted = KNeighborsRegressor(n_neighbors=10).fit(inputs[:half], targets[:half]).predict(inputs[half:])
    return float(np.mean(r2_per_feature(targets[half:], predicted)))


@pytest.fixture(scope="module")
def toy() -> md.MuData:
    return synthetic_gp(n_obs=400, n_private_features=60, seed=1)


def test_synthetic_gp_layout():
    mdata = synthetic_gp(n_obs=120, n_shared_features=4, n_private_features=[6, 7, 8], modalities=("a", "b", "c"))
    assert list(mdata.mod) == ["a", "b", "c"]
    assert mdata.n_obs == 120
    assert [mdata[mod].n_vars for mod in mdata.mod] == [10, 11, 12]
    b = mdata["b"]
    assert b.X.dtype == np.float32
    assert isinstance(b.X, np.ndarray)
    assert list(b.var_names[:5]) == ["b_shared_0", "b_shared_1", "b_shared_2", "b_shared_3", "b_private_0"]
    assert b.var["is_shared"].dtype == bool
    assert b.var["is_shared"].sum() == 4
    assert b.var["is_shared"].iloc[:4].all()
    assert list(mdata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert all((mdata[mod].obs_names == mdata.obs_names).all() for mod in mdata.mod)
    assert mdata.obsm["true_z_shared"].shape == (120, 2)
    for mod in ("a", "b", "c"):
        assert mdata.obsm[f"true_z_private_{mod}"].shape == (120, 2)
    z_shared = mdata.obsm["true_z_shared"]
    assert np.all(np.abs(z_shared) <= 2)
    assert list(mdata.obs["label"].cat.categories) == ["0", "1"]
    np.testing.assert_array_equal(mdata.obs["label"].to_numpy() == "1", z_shared[:, 0] > 0)
    assert mdata.uns["synthetic_gp"]["n_private_features"] == [6, 7, 8]
    assert mdata.uns["synthetic_gp"]["seed"] == 0


def test_synthetic_gp_standardised_then_noised(toy):
    x = toy["m1"].X.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=0.05)
    np.testing.assert_allclose(x.std(axis=0), np.sqrt(1 + 0.15**2), atol=0.03)
    noiseless = synthetic_gp(n_obs=200, n_private_features=20, noise_sd=0.0)["m2"].X.astype(np.float64)
    np.testing.assert_allclose(noiseless.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(noiseless.std(axis=0), 1, atol=1e-6)


def test_synthetic_gp_seed():
    first = synthetic_gp(n_obs=100, n_private_features=20, seed=3)
    again = synthetic_gp(n_obs=100, n_private_features=20, seed=3)
    other = synthetic_gp(n_obs=100, n_private_features=20, seed=4)
    np.testing.assert_array_equal(first["m1"].X, again["m1"].X)
    np.testing.assert_array_equal(first.obsm["true_z_private_m2"], again.obsm["true_z_private_m2"])
    assert not np.allclose(first["m1"].X, other["m1"].X)
    assert not np.allclose(first.obsm["true_z_shared"], other.obsm["true_z_shared"])


def test_synthetic_gp_shared_and_private_structure(toy):
    z_shared = toy.obsm["true_z_shared"]
    for mod in ("m1", "m2"):
        x = toy[mod].X
        is_shared = toy[mod].var["is_shared"].to_numpy()
        z_private = toy.obsm[f"true_z_private_{mod}"]
        assert _knn_r2(z_shared, x[:, is_shared]) > 0.85
        assert _knn_r2(z_private, x[:, is_shared]) < 0.05
        assert _knn_r2(z_private, x[:, ~is_shared]) > 0.85
        assert _knn_r2(z_shared, x[:, ~is_shared]) < 0.05
    # the shared features of one modality predict those of the other, but not its private features
    shared_m1 = toy["m1"].X[:, toy["m1"].var["is_shared"].to_numpy()]
    is_shared_m2 = toy["m2"].var["is_shared"].to_numpy()
    assert _knn_r2(shared_m1, toy["m2"].X[:, is_shared_m2]) > 0.8
    assert _knn_r2(shared_m1, toy["m2"].X[:, ~is_shared_m2]) < 0.05
    # private latents of different modalities are independent
    correlation = np.corrcoef(toy.obsm["true_z_private_m1"][:, 0], toy.obsm["true_z_private_m2"][:, 0])[0, 1]
    assert abs(correlation) < 0.15


def test_synthetic_gp_roundtrip(tmp_path, toy):
    path = tmp_path / "toy.h5mu"
    toy.write(path)
    with md.set_options(pull_on_update=False):
        back = md.read_h5mu(path)
    np.testing.assert_array_equal(back["m2"].X, toy["m2"].X)
    assert back.uns["synthetic_gp"]["noise_sd"] == 0.15
    pd.testing.assert_series_equal(back.obs["label"], toy.obs["label"])


def test_synthetic_gp_errors():
    with pytest.raises(ValueError, match="n_private_features has 3 entries but there are 2 modalities"):
        synthetic_gp(n_obs=50, n_private_features=[5, 5, 5])
    with pytest.raises(ValueError, match="at least two unique names"):
        synthetic_gp(n_obs=50, modalities=("rna",))
    with pytest.raises(ValueError, match="at least two unique names"):
        synthetic_gp(n_obs=50, modalities=("rna", "rna"))
    with pytest.raises(ValueError, match="noise_sd must be >= 0"):
        synthetic_gp(n_obs=50, noise_sd=-1.0)


def test_cll_packaged():
    mdata = cll()
    assert {mod: mdata[mod].shape for mod in mdata.mod} == {
        "rna": (136, 5000),
        "meth": (196, 4248),
        "drugs": (184, 310),
        "mut": (200, 69),
    }
    assert mdata.n_obs == 200
    assert mdata.obs["IGHV"].value_counts().to_dict() == {1.0: 98, 0.0: 74}
    assert mdata.obs["IGHV"].isna().sum() == 28
    assert {"IGHV_status", "trisomy12", "Gender", "age", "TTT", "TTD", "died"} <= set(mdata.obs.columns)
    # partial overlap: 135 patients have both rna and meth
    assert len(mdata["rna"].obs_names.intersection(mdata["meth"].obs_names)) == 135
    assert np.isnan(mdata["mut"].X).any()
    assert "Dietrich" in mdata.uns["source"]


def test_cll_from_path(cll_path, tmp_path):
    packaged = cll()
    from_path = cll(path=cll_path)
    pd.testing.assert_frame_equal(packaged.obs, from_path.obs)
    for mod in packaged.mod:
        np.testing.assert_array_equal(packaged[mod].X, from_path[mod].X)
        assert (packaged[mod].obs_names == from_path[mod].obs_names).all()
    with pytest.raises(FileNotFoundError, match="missing.h5mu"):
        cll(path=tmp_path / "missing.h5mu")


def test_pbmc_cite_mosaic_packaged_matches_shared_copy(cite_path, tmp_path):
    mdata = pbmc_cite_mosaic()
    assert {mod: mdata[mod].shape for mod in mdata.mod} == {"rna": (1200, 500), "protein": (1200, 224)}
    assert mdata.n_obs == 1600
    assert int(mdata.obs["paired"].sum()) == 800
    assert mdata.obs["cell_type"].nunique() == 8
    # batch p1_0 has RNA only, p2_0 protein only
    assert set(mdata.obs.loc[mdata["rna"].obs_names, "batch"]) == {"p1_0", "p3_0", "p4_0"}
    assert set(mdata.obs.loc[mdata["protein"].obs_names, "batch"]) == {"p2_0", "p3_0", "p4_0"}
    rna = mdata["rna"].X
    assert sparse.issparse(rna)
    np.testing.assert_array_equal(rna.data, np.round(rna.data))
    from_path = pbmc_cite_mosaic(path=cite_path)
    for mod in mdata.mod:
        assert (mdata[mod].X != from_path[mod].X).nnz == 0
    with pytest.raises(FileNotFoundError, match="PBMC CITE-seq data file .*missing.h5mu"):
        pbmc_cite_mosaic(path=tmp_path / "missing.h5mu")


@pytest.fixture(scope="module")
def screen() -> md.MuData:
    return synthetic_perturbation(n_cells=1500, n_genes=200, n_guides=8, n_private_programmes=4, effect=1.5, seed=2)


def test_synthetic_perturbation_layout(screen):
    assert {mod: screen[mod].shape for mod in screen.mod} == {"rna": (1500, 200), "guide": (1500, 8)}
    for mod in screen.mod:
        x = screen[mod].X
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, np.round(x))
        assert x.min() >= 0
    guides = screen["guide"].var
    # 20% of 8 guides -> 2 non-targeting controls, each targeting guide with its own target gene
    assert (~guides["is_targeting"]).sum() == 2
    targets = guides.loc[guides["is_targeting"], "target"]
    assert targets.is_unique
    assert set(targets) == set(screen["rna"].var_names[screen["rna"].var["is_target"]])
    np.testing.assert_array_equal(guides.loc[guides["is_targeting"], "effect"], 1.5)
    # every cell's dominant guide has the most guide counts; ambient counts elsewhere
    called = guides.index[screen["guide"].X.argmax(axis=1)]
    assert (called == screen.obs["guide"].to_numpy()).mean() > 0.97
    assert (screen["guide"].X > 0).sum(axis=1).mean() > 1.5
    assert set(screen.obs["replicate"]) == {"rep0", "rep1"}
    assert screen.obs["cell_state"].nunique() == 2
    assert screen.obsm["programme_activity"].shape == (1500, 4)
    assert screen["rna"].varm["programme_loading"].shape == (200, 4)
    effects = screen["rna"].varm["perturbation_effect"]
    assert list(effects.columns) == list(guides.index)
    # a target and 10 downstream genes per targeting guide, nothing for the controls
    assert ((effects != 0).sum(axis=0).to_numpy() == [0, 0] + [11] * 6).all()
    shares = screen.uns["synthetic_perturbation"]["variance_share"]
    assert shares["programmes"] > 0.5 > shares["perturbations"]
    # the stored truth rebuilds the noise-free log expression: its parts give the stored variance shares
    rna = screen["rna"]
    parts = {
        "programmes": screen.obsm["programme_activity"] @ rna.varm["programme_loading"].to_numpy().T,
        "perturbations": effects.to_numpy().T[screen.obs["guide"].cat.codes.to_numpy()],
        "replicates": rna.varm["replicate_shift"][screen.obs["replicate"].to_numpy()].to_numpy().T,
    }
    assert list(rna.varm["replicate_shift"].columns) == ["rep0", "rep1"]
    eta = rna.var["baseline"].to_numpy() + sum(parts.values())
    for name, part in parts.items():
        assert part.var(axis=0).sum() / eta.var(axis=0).sum() == pytest.approx(shares[name], rel=1e-9)


def test_synthetic_perturbation_knock_down_measured(screen):
    counts = screen["rna"].X.astype(np.float64)
    log_normalised = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    controls = (screen.obs["target"] == "non-targeting").to_numpy()
    effects = screen["rna"].varm["perturbation_effect"]
    for guide, target in screen["guide"].var.loc[lambda v: v["is_targeting"], "target"].items():
        cells = (screen.obs["guide"] == guide).to_numpy()
        j = screen["rna"].var_names.get_loc(target)
        # the knocked-down target is lower in the guide's cells, by about the effect on the mean's log scale
        log_fold = np.log(counts[cells, j].mean() / counts[controls, j].mean())
        assert -2.1 < log_fold < -0.9
        assert log_normalised[cells, j].mean() < log_normalised[controls, j].mean() - 0.4
        # downstream genes move in the simulated direction on average
        downstream = np.flatnonzero(effects[guide].to_numpy() * (np.arange(len(effects)) != j))
        shift = log_normalised[cells][:, downstream].mean(axis=0) - log_normalised[controls][:, downstream].mean(axis=0)
        assert np.mean(np.sign(shift) == np.sign(effects[guide].to_numpy()[downstream])) >= 0.7


def test_synthetic_perturbation_seed_and_settings():
    first = synthetic_perturbation(n_cells=300, n_genes=100, n_guides=5, seed=3)
    again = synthetic_perturbation(n_cells=300, n_genes=100, n_guides=5, seed=3)
    other = synthetic_perturbation(n_cells=300, n_genes=100, n_guides=5, seed=4)
    for mod in ("rna", "guide"):
        np.testing.assert_array_equal(first[mod].X, again[mod].X)
        assert not np.array_equal(first[mod].X, other[mod].X)
    pd.testing.assert_series_equal(first.obs["guide"], again.obs["guide"])
    few = synthetic_perturbation(n_cells=300, n_genes=100, n_guides=5, n_private_programmes=1, downstream_size=0)
    assert "cell_cycle_phase" not in few.obs
    assert few["rna"].var["is_downstream"].sum() == 0
    many = synthetic_perturbation(n_cells=300, n_genes=100, n_guides=5, n_private_programmes=10)
    assert many.uns["synthetic_perturbation"]["variance_share"]["programmes"] > 0.8
    per_guide = synthetic_perturbation(n_cells=300, n_genes=100, n_guides=5, effect=[0.5, 1.0, 2.0, 3.0])
    assert per_guide["guide"].var["effect"].tolist() == [0.0, 0.5, 1.0, 2.0, 3.0]


def test_synthetic_perturbation_errors():
    with pytest.raises(ValueError, match="effect has 2 values but there are 4 targeting guides"):
        synthetic_perturbation(n_cells=100, n_genes=100, n_guides=5, effect=[1.0, 2.0])
    with pytest.raises(ValueError, match="need 88 distinct genes, but n_genes=50"):
        synthetic_perturbation(n_cells=100, n_genes=50, n_guides=10)
    with pytest.raises(ValueError, match="leaves no targeting guide"):
        synthetic_perturbation(n_cells=100, n_guides=1)
    with pytest.raises(ValueError, match="non_targeting_fraction must be in"):
        synthetic_perturbation(n_cells=100, non_targeting_fraction=1.0)
