"""Reliability: input formats, duplicate names, views, reproducibility, non-finite losses, save format."""

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch

import spvi

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_checkpointing": False}


@pytest.fixture
def multiome(multiome_path):
    return md.read_h5mu(multiome_path)


def _latents_after_training(mdata: md.MuData, seed: int) -> np.ndarray:
    spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "atac": "counts"}, likelihoods={"atac": "bernoulli"})
    scvi.settings.seed = seed
    model = spvi.SPVI(mdata, n_shared=3, n_private=2)
    model.train(max_epochs=2, **TRAIN_KWARGS)
    return model.get_latent_representation(kind="all")


def test_same_seed_gives_identical_latents(multiome_path):
    first = _latents_after_training(md.read_h5mu(multiome_path), seed=7)
    second = _latents_after_training(md.read_h5mu(multiome_path), seed=7)
    other = _latents_after_training(md.read_h5mu(multiome_path), seed=8)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


@pytest.mark.parametrize(
    "to_format",
    [
        lambda x: x.tocsr(),
        lambda x: x.tocsc(),
        sp.csr_array,
        sp.csc_array,
        lambda x: x.toarray().astype(np.int64),
        lambda x: x.toarray().astype(np.float32),
        lambda x: x.toarray().astype(np.float64),
    ],
    ids=["csr", "csc", "csr_array", "csc_array", "dense-int64", "dense-float32", "dense-float64"],
)
def test_matrix_formats_and_dtypes(multiome, to_format):
    for name in ("rna", "atac"):
        multiome[name].X = to_format(sp.csr_matrix(multiome[name].layers["counts"]))
    spvi.SPVI.setup_mudata(multiome)
    model = spvi.SPVI(multiome, n_shared=2, n_private=2)
    assert model.likelihoods == {"rna": "nb", "atac": "nb"}
    model.train(max_epochs=1, **TRAIN_KWARGS)
    assert np.isfinite(model.history["elbo_train"]["elbo_train"].to_numpy(dtype=float)).all()
    assert model.get_latent_representation().shape == (multiome.n_obs, 2)


def test_duplicate_names_are_rejected(multiome):
    names = multiome["atac"].var_names.to_numpy().copy()
    names[1] = names[0]
    multiome["atac"].var_names = names
    with pytest.raises(ValueError, match="var_names of modality 'atac' are not unique"):
        spvi.SPVI.setup_mudata(multiome, layers={"rna": "counts", "atac": "counts"})


def test_a_view_works_and_is_left_unchanged(multiome):
    view = multiome[:300]
    spvi.SPVI.setup_mudata(view, layers={"rna": "counts", "atac": "counts"})
    model = spvi.SPVI(view, n_shared=2, n_private=2)
    model.train(max_epochs=1, **TRAIN_KWARGS)
    assert model.get_latent_representation().shape == (300, 2)
    assert view.is_view


def test_constant_features_warn(multiome):
    counts = multiome["rna"].layers["counts"].toarray()
    counts[:, 3] = 2.0
    multiome["rna"].layers["counts"] = counts
    with pytest.warns(UserWarning, match="modality 'rna', layer 'counts' has 1 constant features"):
        spvi.SPVI.setup_mudata(multiome, layers={"rna": "counts", "atac": "counts"})


def test_non_finite_loss_names_the_term(multiome):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spvi.SPVI.setup_mudata(multiome, layers={"rna": "counts", "atac": "counts"}, likelihoods={"atac": "bernoulli"})
    model = spvi.SPVI(multiome, n_shared=2, n_private=2)
    with torch.no_grad():
        model.module.decoders[0].likelihood.log_theta.fill_(float("nan"))
    tensors = next(iter(model._make_data_loader(model.adata, batch_size=64)))
    with pytest.raises(FloatingPointError, match="non-finite in: reconstruction of 'rna'"):
        model.module(tensors)


def test_load_checks_the_save_format(multiome, tmp_path):
    spvi.SPVI.setup_mudata(multiome, layers={"rna": "counts", "atac": "counts"})
    model = spvi.SPVI(multiome, n_shared=2, n_private=2)
    model.save(tmp_path / "model")
    assert spvi.SPVI.load(tmp_path / "model", multiome).format_version_ == 2
    saved = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    saved["attr_dict"]["format_version_"] = 99
    torch.save(saved, tmp_path / "model" / "model.pt")
    with pytest.raises(ValueError, match="save format 99"):
        spvi.SPVI.load(tmp_path / "model", multiome)
    with pytest.raises(FileNotFoundError, match="no saved spvi model"):
        spvi.SPVI.load(tmp_path / "missing", multiome)


def test_modality_cells_missing_from_global_obs(multiome):
    multiome["atac"].obs_names = [f"x{i}" for i in range(multiome["atac"].n_obs)]  # no mdata.update()
    with pytest.raises(ValueError, match=r"modality 'atac' has cells that are not in mdata.obs_names.*update\(\)"):
        spvi.SPVI.setup_mudata(multiome, layers={"rna": "counts", "atac": "counts"})


def test_empty_modality_and_missing_labels_column(multiome):
    with pytest.raises(ValueError, match="labels_key 'cell_type' is not a column of mdata.obs"):
        spvi.SPVI.setup_mudata(multiome, labels_key="cell_type")
    empty = md.MuData({"rna": multiome["rna"].copy(), "atac": multiome["atac"][:, :0].copy()})
    with pytest.raises(ValueError, match=r"modality 'atac', \.X is empty"):
        spvi.SPVI.setup_mudata(empty)


def test_duplicate_cell_names_are_rejected(multiome):
    rna = multiome["rna"].copy()
    names = rna.obs_names.to_numpy().copy()
    names[1] = names[0]
    rna.obs_names = names
    with pytest.raises(ValueError, match="not unique"):
        spvi.SPVI.setup_mudata(md.MuData({"rna": rna, "atac": multiome["atac"].copy()}), layers={"rna": "counts"})


def test_cells_with_zero_counts_keep_the_loss_finite(multiome):
    counts = multiome["rna"].layers["counts"].toarray()
    counts[:50] = 0.0  # empty cells: library size 0
    multiome["rna"].layers["counts"] = sp.csr_matrix(counts)
    spvi.SPVI.setup_mudata(multiome, layers={"rna": "counts", "atac": "counts"})
    model = spvi.SPVI(multiome, n_shared=2, n_private=2)
    model.train(max_epochs=2, **TRAIN_KWARGS)
    assert np.isfinite(model.history["elbo_train"]["elbo_train"].to_numpy(dtype=float)).all()
    assert np.isfinite(model.predict(source="atac", target="rna", return_numpy=True)).all()


def _two_gaussian_modalities(shared_signal: float, n_cells: int = 200, seed: int = 0) -> md.MuData:
    """Two Gaussian modalities of 30 features: a 2-d shared factor times ``shared_signal`` plus unit noise."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(n_cells, 2))
    modalities = {}
    for name in ("x", "y"):
        values = shared_signal * factor @ rng.normal(size=(2, 30)) + rng.normal(size=(n_cells, 30))
        modalities[name] = ad.AnnData(values.astype(np.float32))
        modalities[name].obs_names = [f"cell{i}" for i in range(n_cells)]
    return md.MuData(modalities)


@pytest.mark.parametrize("shared_signal", [0.0, 1.0])
def test_warns_when_a_modality_leaves_z_shared_at_the_prior(shared_signal):
    """Independent modalities: z_shared collapses to the prior (KL ~0.02 nats) and train says so; shared signal: no
    warning."""
    mdata = _two_gaussian_modalities(shared_signal)
    spvi.SPVI.setup_mudata(mdata, likelihoods={"x": "gaussian", "y": "gaussian"})
    scvi.settings.seed = 0
    model = spvi.SPVI(mdata, n_shared=3, n_private=2, n_hidden=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=200, **TRAIN_KWARGS)
    collapse = [str(w.message) for w in caught if "z_shared is at its prior" in str(w.message)]
    if shared_signal == 0.0:
        assert len(collapse) == 1
        assert "'x' (mean KL 0.0" in collapse[0]
        assert "'y' (mean KL 0.0" in collapse[0]
        assert caught[[str(w.message) for w in caught].index(collapse[0])].filename == __file__
    else:
        assert collapse == []
