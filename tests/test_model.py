"""The SPVI model on real MuData: registration, every likelihood, embeddings, prediction, save/load, errors."""

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from lightning.pytorch.callbacks import Callback
from scvi.train import TrainingPlan

import spvi
from spvi._trainingplan import SPVITrainingPlan

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_checkpointing": False}


def _train(model: spvi.SPVI, epochs: int = 3) -> spvi.SPVI:
    model.train(max_epochs=epochs, batch_size=128, **TRAIN_KWARGS)
    return model


def _elbo(model: spvi.SPVI) -> np.ndarray:
    return model.history["elbo_train"]["elbo_train"].to_numpy(dtype=float)


def _snapshot(mdata: md.MuData) -> dict:
    """What a user's MuData holds, to check that spvi leaves it alone."""
    return {
        "obs_names": mdata.obs_names.tolist(),
        "obs": mdata.obs.copy(),
        "obsm": set(mdata.obsm.keys()),
        "mods": {
            name: (a.obs_names.tolist(), a.var_names.tolist(), (a.X.toarray() if sp.issparse(a.X) else a.X).copy())
            for name, a in mdata.mod.items()
        },
    }


def _assert_unchanged(mdata: md.MuData, before: dict, new_obsm: set = frozenset()) -> None:
    assert mdata.obs_names.tolist() == before["obs_names"]
    pd.testing.assert_frame_equal(mdata.obs, before["obs"])
    assert set(mdata.obsm.keys()) == before["obsm"] | set(new_obsm)
    for name, (obs_names, var_names, x) in before["mods"].items():
        a = mdata.mod[name]
        assert a.obs_names.tolist() == obs_names
        assert a.var_names.tolist() == var_names
        np.testing.assert_array_equal(a.X.toarray() if sp.issparse(a.X) else a.X, x)


@pytest.fixture
def cite(cite_path):
    return md.read_h5mu(cite_path)


@pytest.fixture
def cll_small(cll_path):
    """CLL patients with mRNA or methylation, 300 features of each plus the mutations (34% NaN)."""
    mdata = md.read_h5mu(cll_path)
    keep = mdata.obs_names[mdata.obs["has_rna"].astype(bool) | mdata.obs["has_meth"].astype(bool)]
    mdata = mdata[keep].copy()
    return md.MuData(
        {"rna": mdata["rna"][:, :300].copy(), "meth": mdata["meth"][:, :300].copy(), "mut": mdata["mut"].copy()},
        obs=mdata.obs,
    )


@pytest.mark.parametrize(("rna_likelihood", "protein_likelihood"), [("nb", "nbmixture"), ("zinb", "nb")])
def test_count_likelihoods_on_cite_mosaic(cite, rna_likelihood, protein_likelihood):
    before = _snapshot(cite)
    spvi.SPVI.setup_mudata(
        cite,
        modalities=["rna", "protein"],
        layers={"rna": "counts", "protein": "counts"},
        likelihoods={"rna": rna_likelihood, "protein": protein_likelihood},
        batch_key="batch",
    )
    model = _train(spvi.SPVI(cite, n_shared=6, n_private=3))
    losses = _elbo(model)
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]

    z = model.get_latent_representation()
    assert z.shape == (cite.n_obs, 6)
    assert np.isfinite(z).all()  # every cell has rna or protein
    private_protein = model.get_latent_representation(kind="private", modality="protein")
    has_protein = cite.obs["has_protein"].to_numpy().astype(bool)
    assert np.isnan(private_protein[~has_protein]).all()
    assert np.isfinite(private_protein[has_protein]).all()

    protein_from_rna = model.predict(source="rna", target="protein", return_numpy=True)
    assert protein_from_rna.shape == (cite.n_obs, cite["protein"].n_vars)
    has_rna = cite.obs["has_rna"].to_numpy().astype(bool)
    assert np.isfinite(protein_from_rna[has_rna]).all()
    assert (protein_from_rna[has_rna] >= 0).all()
    assert np.isnan(protein_from_rna[~has_rna]).all()  # protein-only cells have no rna to predict from
    _assert_unchanged(cite, before)


@pytest.mark.parametrize("encode_covariates", [False, True])
def test_batch_enters_the_encoders_only_with_encode_covariates(cite, encode_covariates):
    spvi.SPVI.setup_mudata(
        cite, modalities=["rna", "protein"], layers={"rna": "counts", "protein": "counts"}, batch_key="batch"
    )
    scvi.settings.seed = 0
    model = _train(spvi.SPVI(cite, n_shared=4, n_private=2, encode_covariates=encode_covariates), epochs=2)
    z = model.get_latent_representation()
    # relabel every cell's batch (same categories, permuted): the embedding changes only if encoders see the batch
    relabelled = cite.copy()
    categories = sorted(cite.obs["batch"].unique())
    relabelled.obs["batch"] = cite.obs["batch"].map(dict(zip(categories, categories[1:] + categories[:1], strict=True)))
    z_relabelled = model.get_latent_representation(relabelled)
    assert np.allclose(z, z_relabelled) is not encode_covariates
    n_genes = cite["rna"].n_vars
    first_layer = model.module.encoders[0].trunk.fc_layers[0][0]
    assert first_layer.in_features == n_genes + (4 if encode_covariates else 0)


def test_predict_library_size(cite):
    spvi.SPVI.setup_mudata(cite, modalities=["rna", "protein"], layers={"rna": "counts", "protein": "counts"})
    model = _train(spvi.SPVI(cite, n_shared=4, n_private=2), epochs=1)
    observed = model.predict(source="protein", target="rna", return_numpy=True)
    has_rna = cite.obs["has_rna"].to_numpy().astype(bool)
    both = has_rna & cite.obs["has_protein"].to_numpy().astype(bool)
    rna_counts = cite["rna"].layers["counts"]
    library = np.asarray(rna_counts.sum(axis=1)).ravel()
    library_by_cell = pd.Series(library, index=cite["rna"].obs_names)
    # NB mean sums to the library size over features (softmax scale)
    np.testing.assert_allclose(observed[both].sum(axis=1), library_by_cell[cite.obs_names[both]], rtol=1e-3)
    # cells without rna are predicted at the median library size of the rna cells
    protein_only = ~has_rna
    np.testing.assert_allclose(observed[protein_only].sum(axis=1), np.median(library), rtol=1e-3)
    fixed = model.predict(source="protein", target="rna", library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(np.nansum(fixed, axis=1)[~np.isnan(fixed).any(axis=1)], 1e4, rtol=1e-3)


@pytest.mark.parametrize("atac_likelihood", ["bernoulli", "poisson"])
def test_atac_likelihoods_on_multiome(multiome_path, atac_likelihood):
    mdata = md.read_h5mu(multiome_path)
    spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "atac": "counts"}, likelihoods={"atac": atac_likelihood})
    model = _train(spvi.SPVI(mdata, n_shared=4, n_private=2, objective="mopoe"))
    assert np.isfinite(_elbo(model)).all()
    atac = model.predict(source="rna", target="atac", return_numpy=True)
    assert atac.shape == (mdata.n_obs, mdata["atac"].n_vars)
    if atac_likelihood == "bernoulli":
        assert ((atac > 0) & (atac < 1)).all()
    else:
        assert (atac >= 0).all()


def test_gaussian_with_nan_and_partial_overlap_on_cll(cll_small):
    assert np.isnan(cll_small["mut"].X).any()
    before = _snapshot(cll_small)
    spvi.SPVI.setup_mudata(cll_small, labels_key="IGHV")
    assert spvi.SPVI(cll_small).likelihoods == {"rna": "gaussian", "meth": "gaussian", "mut": "gaussian"}
    model = _train(spvi.SPVI(cll_small, n_shared=3, n_private=2, objective="mvae"), epochs=5)
    assert np.isfinite(_elbo(model)).all()
    model.write_latents()
    new_keys = {"X_spvi_shared", "X_spvi_private_rna", "X_spvi_private_meth", "X_spvi_private_mut"}
    _assert_unchanged(cll_small, before, new_keys)
    has_rna = cll_small.obs_names.isin(cll_small["rna"].obs_names)
    assert np.isnan(cll_small.obsm["X_spvi_private_rna"][~has_rna]).all()
    assert np.isfinite(cll_small.obsm["X_spvi_shared"]).all()

    probabilities = model.predict_labels()
    assert sorted(probabilities.columns) == sorted(str(v) for v in cll_small.obs["IGHV"].dropna().unique())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_semi_supervised_label_head_learns_ighv(cll_path):
    """With IGHV given, the label head on z_shared separates the two IGHV groups on the training patients."""
    mdata = md.read_h5mu(cll_path)
    both = mdata.obs_names[mdata.obs["has_rna"].astype(bool) & mdata.obs["has_meth"].astype(bool)]
    mdata = md.MuData({"rna": mdata["rna"][both, :500].copy(), "meth": mdata["meth"][both, :500].copy()})
    mdata.obs["IGHV"] = md.read_h5mu(cll_path).obs.loc[both, "IGHV"]
    spvi.SPVI.setup_mudata(mdata, labels_key="IGHV")
    scvi.settings.seed = 0
    model = spvi.SPVI(mdata, n_shared=2, n_private=2, label_weight=10.0)
    model.train(max_epochs=60, lr=3e-3, train_size=1.0, **TRAIN_KWARGS)
    probabilities = model.predict_labels()
    probabilities = probabilities[probabilities.columns[probabilities.columns.astype(float) == 1.0][0]]
    labelled = mdata.obs["IGHV"].notna()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(mdata.obs.loc[labelled, "IGHV"], probabilities[labelled]) > 0.9


def test_save_load_gives_identical_latents(cite, tmp_path):
    spvi.SPVI.setup_mudata(
        cite,
        modalities=["rna", "protein"],
        layers={"rna": "counts", "protein": "counts"},
        categorical_covariate_keys=["batch"],
    )
    model = _train(spvi.SPVI(cite, n_shared=4, n_private=2, objective="mopoe"), epochs=1)
    z = model.get_latent_representation()
    prediction = model.predict(source="rna", target="protein")
    model.save(tmp_path / "model")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "model")
    model.save(tmp_path / "model", overwrite=True)

    loaded = spvi.SPVI.load(tmp_path / "model", cite)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    np.testing.assert_array_equal(loaded.predict(source="rna", target="protein"), prediction)
    assert loaded.module.objective_name == "mopoe"

    fresh = md.read_h5mu(cite.filename) if cite.filename else None
    if fresh is not None:
        np.testing.assert_array_equal(spvi.SPVI.load(tmp_path / "model", fresh).get_latent_representation(), z)
    with pytest.raises(ValueError, match="no saved MuData"):
        spvi.SPVI.load(tmp_path / "model")


def test_embedding_new_data_and_reordered_features(cite, cite_path):
    spvi.SPVI.setup_mudata(cite, modalities=["rna", "protein"], layers={"rna": "counts", "protein": "counts"})
    model = _train(spvi.SPVI(cite, n_shared=4, n_private=2), epochs=1)
    z = model.get_latent_representation()
    other = md.read_h5mu(cite_path)
    shuffled = md.MuData({"rna": other["rna"][:, ::-1].copy(), "protein": other["protein"].copy()})
    shuffled.obs = other.obs
    np.testing.assert_allclose(model.get_latent_representation(shuffled), z, rtol=1e-5, atol=1e-6)
    missing = md.MuData({"rna": other["rna"][:, 5:].copy(), "protein": other["protein"].copy()})
    with pytest.raises(ValueError, match="modality 'rna' lacks 5 of the 500 features"):
        model.get_latent_representation(missing)


def test_bad_inputs_raise_clear_errors(cite, cll_small):
    with pytest.raises(ValueError, match="modality 'atac' not found"):
        spvi.SPVI.setup_mudata(cite, modalities=["rna", "atac"])
    with pytest.raises(ValueError, match="layer 'raw' not found in modality 'rna'"):
        spvi.SPVI.setup_mudata(cite, layers={"rna": "raw"})
    with pytest.raises(ValueError, match="likelihood 'gamma' for modality 'rna' is unknown"):
        spvi.SPVI.setup_mudata(cite, likelihoods={"rna": "gamma"})
    with pytest.raises(ValueError, match="batch_key 'donor' is not a column of mdata.obs"):
        spvi.SPVI.setup_mudata(cite, batch_key="donor")
    with pytest.raises(ValueError, match=r"modality 'rna', \.X contains non-integer values.*'nb'"):
        spvi.SPVI.setup_mudata(cll_small, modalities=["rna", "meth"], likelihoods={"rna": "nb"})
    with pytest.raises(ValueError, match=r"modality 'mut', \.X contains NaN.*'poisson'"):
        spvi.SPVI.setup_mudata(cll_small, modalities=["meth", "mut"], likelihoods={"mut": "poisson"})
    negative = cite["protein"].layers["counts"].copy()
    negative.data[0] = -1.0
    cite["protein"].layers["negative"] = negative
    with pytest.raises(ValueError, match="layer 'negative' contains negative values"):
        spvi.SPVI.setup_mudata(cite, layers={"rna": "counts", "protein": "negative"}, likelihoods={"protein": "nb"})
    cite["protein"].layers["inf"] = cite["protein"].layers["counts"].toarray()
    cite["protein"].layers["inf"][0, 0] = np.inf
    with pytest.raises(ValueError, match="layer 'inf' contains inf"):
        spvi.SPVI.setup_mudata(cite, layers={"rna": "counts", "protein": "inf"}, likelihoods={"protein": "gaussian"})
    with pytest.raises(TypeError, match="needs a MuData"):
        spvi.SPVI.setup_mudata(cite["rna"])
    with pytest.raises(ValueError, match="setup_mudata"):
        spvi.SPVI(md.MuData({"a": cite["rna"].copy(), "b": cite["rna"].copy()}))

    spvi.SPVI.setup_mudata(cite, layers={"rna": "counts", "protein": "counts"})
    model = spvi.SPVI(cite)
    with pytest.raises(ValueError, match="source must name modalities the model was trained on"):
        model.predict(source="atac", target="rna")
    with pytest.raises(ValueError, match="objective must be one of"):
        spvi.SPVI(cite, objective="vae")
    with pytest.raises(ValueError, match="no label head"):
        model.predict_labels()


def test_cells_without_any_modality_are_rejected(cll_path):
    mdata = md.read_h5mu(cll_path)
    with pytest.raises(ValueError, match="3 cells have none of the modalities"):
        spvi.SPVI.setup_mudata(mdata, modalities=["rna", "meth"])


def test_keep_best_restores_the_epoch_with_the_best_cross_modal_nll(cll_small):
    spvi.SPVI.setup_mudata(cll_small)
    scvi.settings.seed = 0
    model = spvi.SPVI(cll_small, n_shared=10, n_private=10)
    model.train(
        max_epochs=150,
        lr=1e-2,
        train_size=0.8,
        early_stopping_monitor="cross_modal_nll_validation",
        keep_best=True,
        **TRAIN_KWARGS,
    )
    history = model.history["cross_modal_nll_validation"]["cross_modal_nll_validation"].to_numpy(dtype=float)
    assert len(history) == 150
    assert np.isfinite(history).all()
    assert history.argmin() < len(history) - 1  # at lr 1e-2 the held-out cross-modal fit gets worse again

    validation = np.sort(model.validation_indices)
    assert len(validation) <= 128  # one validation minibatch: its mean is the logged epoch value
    (tensors,) = model._minibatches(None, validation, 128)
    with torch.no_grad():
        inference_outputs = model.module.inference(**model.module._get_inference_input(tensors))
        per_cell = model.module.cross_modal_nll(tensors, inference_outputs).numpy()
    assert per_cell.mean() == pytest.approx(history.min(), rel=1e-4)  # the best epoch's parameters are back
    assert (tensors["presence"].sum(dim=1) > 1).all()
    assert (per_cell != 0).all()
    # cells seen in one modality only have nothing to predict from: 0
    tensors["presence"][:, 1:] = False
    with torch.no_grad():
        inference_outputs = model.module.inference(**model.module._get_inference_input(tensors))
        assert (model.module.cross_modal_nll(tensors, inference_outputs) == 0).all()


def test_keep_best_needs_a_validation_set(cll_small):
    spvi.SPVI.setup_mudata(cll_small)
    with pytest.raises(ValueError, match="keep_best needs a validation set"):
        spvi.SPVI(cll_small).train(max_epochs=1, train_size=1.0, keep_best=True, **TRAIN_KWARGS)


def test_training_defaults_use_every_cell_and_scale_with_the_data(cll_small):
    spvi.SPVI.setup_mudata(cll_small, modalities=["rna", "meth"])
    model = spvi.SPVI(cll_small)
    model.train(max_epochs=2, **TRAIN_KWARGS)
    assert len(model.train_indices) == cll_small.n_obs  # nothing validated: no cell held back
    assert len(model.validation_indices) == 0
    # KL warm-up in steps, totalVI's 0.75 * n_cells, capped at the run's length (2 epochs of 2 steps)
    assert model.trainer.lightning_module.n_steps_kl_warmup == 4
    assert model.trainer.lightning_module.n_epochs_kl_warmup is None

    model = spvi.SPVI(cll_small)
    model.train(max_epochs=2, early_stopping=True, **TRAIN_KWARGS)
    assert abs(len(model.validation_indices) - 0.1 * cll_small.n_obs) <= 1
    model = spvi.SPVI(cll_small)
    model.train(max_epochs=500, **TRAIN_KWARGS | {"max_steps": 1})  # stop at once: only the plan is checked
    assert model.trainer.lightning_module.n_steps_kl_warmup == int(0.75 * cll_small.n_obs)


def test_training_again_runs_the_module_in_training_mode(cll_small):
    """Inference leaves the module in eval mode; a further call to train must train in training mode."""
    spvi.SPVI.setup_mudata(cll_small, modalities=["rna", "meth"])
    model = spvi.SPVI(cll_small, dropout_rate=0.1)
    model.train(max_epochs=1, **TRAIN_KWARGS)
    model.get_latent_representation()
    assert not model.module.training
    modes = []

    class RecordMode(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(pl_module.module.training)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Lightning: "Found ... module(s) in eval mode"
        model.train(max_epochs=1, callbacks=[RecordMode()], **TRAIN_KWARGS)
    assert modes
    assert all(modes)
    # the cross-modal diagnostic is computed in evaluation only, so training history does not have it
    assert "cross_modal_nll_train" not in model.history


def test_training_history_equals_scvi_tools_per_step_logging(cll_small, monkeypatch):
    """The plan accumulates the per-epoch training metrics itself: same names and values as scvi-tools' logging."""
    spvi.SPVI.setup_mudata(cll_small, modalities=["rna", "meth"])
    histories = []
    for logging_path in ("spvi", "scvi-tools"):
        if logging_path == "scvi-tools":
            monkeypatch.setattr(SPVITrainingPlan, "training_step", TrainingPlan.training_step)
            monkeypatch.setattr(SPVITrainingPlan, "on_train_epoch_end", lambda self: None)
        scvi.settings.seed = 0
        model = spvi.SPVI(cll_small, alignment_weight=0.5)  # an extra metric ("alignment") besides reconstructions
        model.train(max_epochs=3, batch_size=32, train_size=0.8, check_val_every_n_epoch=1, **TRAIN_KWARGS)
        histories.append(model.history)
    ours, reference = histories
    assert sorted(ours) == sorted(reference)
    assert {"train_loss", "elbo_train", "kl_local_train", "alignment_train", "reconstruction_rna_train"} <= set(ours)
    for key in reference:
        assert len(ours[key]) == len(reference[key]) > 0, key
        np.testing.assert_allclose(ours[key].to_numpy(float), reference[key].to_numpy(float), rtol=1e-5, err_msg=key)


def test_gaussian_modalities_are_standardised_inside_the_model(tcga_path, tmp_path):
    """An affine change of a Gaussian modality's units changes nothing but the units of its predictions."""
    tcga = md.read_h5mu(tcga_path)
    assert tcga["rna"].X.mean(axis=0).max() > 10  # log expression as shipped, far from standardised
    shifted = tcga.copy()
    shifted["rna"].X = 7.0 * tcga["rna"].X + 100.0
    latents, predictions = [], []
    for data in (tcga, shifted):
        spvi.SPVI.setup_mudata(data, modalities=["rna", "mirna", "protein"])
        scvi.settings.seed = 0
        model = _train(spvi.SPVI(data, n_shared=3, n_private=2), epochs=3)
        latents.append(model.get_latent_representation())
        predictions.append(model.predict(source="mirna", target="rna", return_numpy=True))
    np.testing.assert_allclose(latents[1], latents[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(predictions[1], 7.0 * predictions[0] + 100.0, rtol=1e-4)
    # on the user's scale: predicted feature means near the observed ones
    observed_mean = tcga["rna"].X.mean(axis=0)
    assert np.abs(predictions[0].mean(axis=0) - observed_mean).max() < 3 * tcga["rna"].X.std(axis=0).max()

    # the statistics are saved with the model; a model saved before standardisation (format 1) loads as identity
    model.save(tmp_path / "model")
    loaded = spvi.SPVI.load(tmp_path / "model", shifted)
    np.testing.assert_allclose(loaded.predict(source="mirna", target="rna"), predictions[1], rtol=1e-5)
    state = {k: v for k, v in model.module.state_dict().items() if "feature_" not in k}
    model.module.load_state_dict(state)
    head = model.module.decoders[0].likelihood
    assert float(head.feature_mean.abs().max()) == 0.0
    assert float(head.feature_scale.min()) == float(head.feature_scale.max()) == 1.0
