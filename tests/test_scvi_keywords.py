"""scvi-tools keywords on the CITE mosaic: give_mean, return_dist, adata=, predict DataFrames, load(adata=)."""

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch

import spvi
from spvi._constants import PRESENCE_OBSM_KEY

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_checkpointing": False}


@pytest.fixture(scope="module")
def model():
    mdata = spvi.datasets.pbmc_cite_mosaic()
    spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "protein": "counts"}, batch_key="batch")
    scvi.settings.seed = 0
    model = spvi.SPVI(mdata, n_shared=4, n_private=2, n_hidden=32)
    model.train(max_epochs=3, **TRAIN_KWARGS)
    return model


def test_return_dist_is_the_moments_of_the_mixture(model):
    mean, variance = model.get_latent_representation(return_dist=True)
    np.testing.assert_array_equal(mean, model.get_latent_representation())
    assert mean.shape == variance.shape == (1600, 4)
    # cells with one modality: the posterior is that modality's expert
    registered = model.adata
    tensors = next(iter(model._make_data_loader(adata=registered, batch_size=1600, shuffle=False)))
    model.module.eval()
    with torch.inference_mode():
        outputs = model.module.inference(**model.module._get_inference_input(tensors))
    presence = registered.obsm[PRESENCE_OBSM_KEY].astype(bool)
    rna_expert, protein_expert = outputs["qz_shared"]
    rna_only = presence[:, 0] & ~presence[:, 1]
    np.testing.assert_allclose(variance[rna_only], rna_expert.scale.square().numpy()[rna_only], rtol=1e-5)
    # paired cells: mixture of the two experts (law of total variance)
    paired = presence.all(axis=1)
    means = np.stack([rna_expert.loc.numpy(), protein_expert.loc.numpy()])
    variances = np.stack([rna_expert.scale.square().numpy(), protein_expert.scale.square().numpy()])
    expected = variances.mean(axis=0) + means.var(axis=0)
    np.testing.assert_allclose(variance[paired], expected[paired], rtol=1e-4, atol=1e-6)

    private_mean, private_variance = model.get_latent_representation(
        kind="private", modality="protein", return_dist=True
    )
    assert np.isnan(private_variance[rna_only]).all()
    np.testing.assert_allclose(private_variance[~rna_only], outputs["qz_private"][1].scale.square().numpy()[~rna_only])


def test_give_mean_false_samples_the_posterior(model):
    cells = np.arange(0, 1600, 20)  # 80 cells of every kind (RNA only, protein only, paired)
    mean, variance = model.get_latent_representation(indices=cells, return_dist=True, kind="all")
    samples = np.stack(
        [model.get_latent_representation(indices=cells, give_mean=False, kind="all") for _ in range(300)]
    )
    assert not np.allclose(samples[0], samples[1])
    observed = ~np.isnan(mean)
    assert (np.isnan(samples[0]) == ~observed).all()
    # Monte Carlo mean and variance agree with return_dist (300 draws: about 6% relative error on the variance)
    standard_error = np.sqrt(variance / 300)
    assert np.all(np.abs(samples.mean(axis=0) - mean)[observed] < 5 * standard_error[observed])
    ratio = samples.var(axis=0)[observed] / variance[observed]
    assert 0.9 < np.median(ratio) < 1.1


def test_adata_is_an_alias_of_mdata(model, tmp_path):
    mdata = model.mdata
    np.testing.assert_array_equal(model.get_latent_representation(adata=mdata), model.get_latent_representation(mdata))
    with pytest.raises(TypeError, match="mdata= or as adata="):
        model.get_latent_representation(mdata, adata=mdata)
    pd.testing.assert_frame_equal(
        model.predict(source="rna", target="protein", adata=mdata),
        model.predict(source="rna", target="protein", mdata=mdata),
    )
    model.save(tmp_path / "model")
    loaded = spvi.SPVI.load(tmp_path / "model", adata=mdata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    with pytest.raises(TypeError, match="not both"):
        spvi.SPVI.load(tmp_path / "model", mdata=mdata, adata=mdata)
    # the downstream methods take the alias too
    scores = []
    for keyword in ("adata", "mdata"):
        torch.manual_seed(0)  # the ELBO is estimated with posterior samples
        scores.append((model.get_elbo(**{keyword: mdata}), model.get_reconstruction_error(**{keyword: mdata})))
    assert scores[0] == scores[1]
    with pytest.raises(TypeError, match="not both"):
        model.get_normalized_expression(mdata, modality="protein", adata=mdata)


def test_predict_returns_named_dataframes(model):
    mdata = model.mdata
    batch = mdata.obs["batch"].to_numpy()
    rna_only, protein_only, paired = (np.flatnonzero(batch == b)[0] for b in ("p1_0", "p2_0", "p3_0"))
    cells = [rna_only, protein_only, paired]
    frame = model.predict(source="rna", target="protein", indices=cells)
    assert list(frame.index) == list(mdata.obs_names[cells])
    assert list(frame.columns) == list(mdata["protein"].var_names)
    array = model.predict(source="rna", target="protein", indices=cells, return_numpy=True)
    assert isinstance(array, np.ndarray)
    np.testing.assert_array_equal(frame.to_numpy(), array)
    # a protein-only cell has no RNA to predict from
    assert frame.loc[mdata.obs_names[protein_only]].isna().all()
    assert frame.loc[mdata.obs_names[[rna_only, paired]]].notna().all().all()


def test_latents_of_a_query_without_a_modality(model):
    protein_only = md.MuData({"protein": model.mdata["protein"][:50].copy()})
    protein_only.obs["batch"] = model.mdata.obs.loc[protein_only.obs_names, "batch"].to_numpy()
    z = model.get_latent_representation(protein_only)
    np.testing.assert_allclose(
        z,
        model.get_latent_representation(model.mdata, modality="protein")[
            model.mdata.obs_names.get_indexer(protein_only.obs_names)
        ],
        rtol=1e-5,
        atol=1e-6,
    )
