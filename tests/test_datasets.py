import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.neighbors import KNeighborsRegressor

from spvi.datasets import cll, pbmc_cite_mosaic, synthetic_gp
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
