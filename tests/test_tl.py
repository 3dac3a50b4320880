"""spvi.tl on real data: CLL (mRNA + methylation, IGHV) and the PBMC CITE-seq mosaic (counts, missing modalities)."""

from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch
from scipy.optimize import minimize_scalar
from sklearn.model_selection import train_test_split

import spvi
from spvi.metrics import pearson_per_feature, r2_per_feature

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def cll():
    """MMVAE++ on the CLL patients with both modalities and IGHV: 10 IGHV-associated + 10 other features each.

    Returns the MuData (``var["is_shared"]`` marks the IGHV-associated features), the trained model and the
    names of the training patients (the features are ranked on them; the model sees all patients).
    """
    md.set_options(pull_on_update=False)
    data = spvi.datasets.cll()
    keep = data.obs["has_rna"].astype(bool) & data.obs["has_meth"].astype(bool) & data.obs["IGHV"].notna()
    data = data[keep.to_numpy()].copy()
    train, _ = train_test_split(
        data.obs_names.to_numpy(), test_size=0.3, stratify=data.obs["IGHV_status"], random_state=0
    )
    mdata = spvi.pp.select_shared_and_other(
        data, "IGHV_status", n_top=10, n_other=10, modalities=["rna", "meth"], train_obs=train
    )
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(mdata, modalities=["rna", "meth"])
    model = spvi.SPVI(mdata, n_shared=2, n_private=2)
    model.train(max_epochs=300, train_size=1.0, **TRAIN_KWARGS)
    return mdata, model, train


@pytest.fixture(scope="module")
def cite():
    """A few epochs of MMVAE++ on the CITE-seq mosaic: 400 RNA-only, 400 protein-only and 800 paired cells."""
    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(_cite_path())
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(
        mdata,
        modalities=["rna", "protein"],
        layers={"rna": "counts", "protein": "counts"},
        likelihoods={"rna": "nb", "protein": "nbmixture"},
        batch_key="batch",
    )
    model = spvi.SPVI(mdata, n_shared=8, n_private=4)
    model.train(max_epochs=25, train_size=0.9, check_val_every_n_epoch=1, **TRAIN_KWARGS)
    return mdata, model


def _cite_path() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc_cite_midas.h5mu"
    if not path.exists():
        pytest.fail(f"test data {path} not found: clone the repository with ../shared beside it")
    return path


# ---------------------------------------------------------------------- variance explained
def test_variance_explained_per_modality_and_per_feature(cll):
    mdata, model, _ = cll
    table = spvi.tl.variance_explained(model, inplace=False)
    assert list(table.index) == ["rna", "meth"]
    assert list(table.columns) == ["shared", "private", "shared+private"]
    assert np.isfinite(table.to_numpy()).all()
    assert (table.to_numpy() <= 1.0).all()
    # "private" is what the private block adds to z_shared: the two add up to both
    np.testing.assert_allclose(table["shared"] + table["private"], table["shared+private"], atol=1e-12)
    assert (table["shared+private"] > 0.4).all()
    assert (table["shared"] > table["private"]).all()  # the 2-d z_shared carries the IGHV signal of 10 features each

    features = spvi.tl.variance_explained(model, per_feature=True, inplace=False)
    assert len(features) == mdata["rna"].n_vars + mdata["meth"].n_vars
    assert set(features["modality"]) == {"rna", "meth"}
    rna = features[features["modality"] == "rna"].set_index("feature")
    assert list(rna.index) == list(mdata["rna"].var_names)
    # Gaussian: the fraction of deviance is the R² of the reconstruction, here what predict() gives from both
    both = model.predict(source=["rna", "meth"], target="rna", return_numpy=True)
    np.testing.assert_allclose(rna["shared+private"], r2_per_feature(mdata["rna"].X, both), atol=1e-5)
    # the IGHV-associated features are explained by z_shared better than the others
    shared = mdata["rna"].var["is_shared"].to_numpy(dtype=bool)
    assert rna["shared"][shared].mean() > rna["shared"][~shared].mean() + 0.2


def test_variance_explained_per_dimension(cll):
    mdata, model, _ = cll
    dimensions = spvi.tl.variance_explained(model, by="dimension", inplace=False)
    assert list(dimensions.index) == [
        "shared_0",
        "shared_1",
        "private_rna_0",
        "private_rna_1",
        "private_meth_0",
        "private_meth_1",
    ]
    assert list(dimensions.columns) == ["rna", "meth"]
    # a private dimension explains only its own modality
    assert dimensions.loc[["private_rna_0", "private_rna_1"], "meth"].isna().all()
    assert dimensions.loc[["private_meth_0", "private_meth_1"], "rna"].isna().all()
    # drop-one: what the joint reconstruction loses without the dimension, never much below 0 at the optimum
    assert (dimensions.stack() > -0.05).all()
    # by hand for one dimension: R² of the joint reconstruction minus that with shared_0 at 0
    module = model.module
    tensors = next(iter(model._minibatches(None, None, mdata.n_obs)))
    with torch.no_grad():
        outputs = module.inference(**module._get_inference_input(tensors))
        z = torch.cat(
            [module.shared_posterior_mean(outputs["qz_shared"], outputs["presence"]), outputs["qz_private"][0].loc], 1
        )
        ones = torch.ones(z.shape[0], 1)
        decode = module.decoders[0]
        full = decode(z, ones, ones.bool() & False, *module._categorical(tensors))
        z[:, 0] = 0.0
        without = decode(z, ones, ones.bool() & False, *module._categorical(tensors))
        full, without = (decode.likelihood.expected_value(p).numpy() for p in (full, without))
    x = np.asarray(mdata["rna"].X, dtype=np.float64)
    ss_tot = ((x - x.mean(0)) ** 2).sum()
    expected = (((x - without) ** 2).sum() - ((x - full) ** 2).sum()) / ss_tot
    assert dimensions.loc["shared_0", "rna"] == pytest.approx(expected, rel=1e-4)


def test_variance_explained_on_counts_is_the_deviance_explained(cite):
    mdata, model = cite
    table = spvi.tl.variance_explained(model, inplace=False)
    assert list(table.index) == ["rna", "protein"]
    assert (table.to_numpy() <= 1.0).all()
    assert (table["shared"] > 0.0).all()
    assert (table["shared+private"] > table["shared"]).all()
    # by hand for RNA (negative binomial): the joint reconstruction is predict() from both modalities at the
    # cell's library size; the null is each gene's NB maximum-likelihood mean proportion (scipy, gene by gene)
    features = spvi.tl.variance_explained(model, modalities="rna", per_feature=True, inplace=False)
    rna = mdata["rna"]
    x = rna.layers["counts"].toarray().astype(np.float64)
    mean = pd.DataFrame(model.predict(source=["rna", "protein"], target="rna"), index=mdata.obs_names)
    mean = mean.loc[rna.obs_names].to_numpy(dtype=np.float64)
    theta = torch.exp(model.module.decoders[0].likelihood.log_theta.detach().clamp(-10, 12)).double().numpy()
    library = x.sum(1, keepdims=True)

    def deviance(x, mu, theta):
        with np.errstate(divide="ignore", invalid="ignore"):
            x_log = np.where(x > 0, x * np.log(x / mu), 0.0)
        return 2 * (x_log - (x + theta) * np.log((x + theta) / (mu + theta)))

    for g in np.flatnonzero(x.sum(0) > 50)[:5]:
        null = minimize_scalar(lambda c, g=g: deviance(x[:, g], library[:, 0] * np.exp(c), theta[g]).sum())
        expected = 1.0 - deviance(x[:, g], mean[:, g], theta[g]).sum() / null.fun
        assert features["shared+private"].iloc[g] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    with pytest.raises(ValueError, match="modalities must name modalities"):
        spvi.tl.variance_explained(model, modalities="atac", inplace=False)
    with pytest.raises(ValueError, match="by must be"):
        spvi.tl.variance_explained(model, by="factor", inplace=False)


def test_results_are_stored_in_the_mudata(cite, tmp_path):
    mdata, model = cite
    assert spvi.tl.variance_explained(model) is None
    stored = mdata.uns["spvi"]
    pd.testing.assert_frame_equal(stored["variance_explained"], spvi.tl.variance_explained(model, inplace=False))
    dimensions = spvi.tl.variance_explained(model, by="dimension", inplace=False)
    pd.testing.assert_frame_equal(stored["variance_explained_dimensions"], dimensions)
    per_feature = mdata["protein"].varm["spvi_variance_explained"]
    assert list(per_feature.index) == list(mdata["protein"].var_names)
    assert list(per_feature.columns[:3]) == ["shared", "private", "shared+private"]

    assert spvi.tl.feature_associations(model, "protein", kind="private") is None
    correlation = mdata["protein"].varm["spvi_correlation_private"]
    assert correlation.shape == (mdata["protein"].n_vars, 4)
    pd.testing.assert_frame_equal(
        spvi.tl.association_table(mdata, "protein", kind="private"),
        spvi.tl.feature_associations(model, "protein", kind="private", inplace=False),
    )
    assert spvi.tl.label_association(model, "cell_type", n_neighbors=10) is None
    assert spvi.tl.prediction_quality(model, "rna", "protein") is None
    assert list(spvi.tl.stored(mdata, "label_association")) == ["auc", "knn_accuracy", "n_train", "n_test"]
    assert spvi.tl.stored(mdata, "prediction_quality", "rna_to_protein")["metric"].eq("pearson").all()
    with pytest.raises(ValueError, match="has no 'atac_to_rna'"):
        spvi.tl.stored(mdata, "prediction_quality", "atac_to_rna")
    with pytest.raises(ValueError, match="run spvi.tl.feature_associations"):
        spvi.tl.association_table(mdata, "rna", kind="private")

    # the stored results survive writing the MuData to disk
    path = tmp_path / "analysed.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path)
    np.testing.assert_allclose(
        np.asarray(back.uns["spvi"]["variance_explained"]), stored["variance_explained"].to_numpy()
    )
    np.testing.assert_allclose(np.asarray(back["protein"].varm["spvi_correlation_private"]), correlation.to_numpy())


def test_neighbors_on_cells_missing_a_modality(cite):
    mdata, model = cite
    spvi.tl.neighbors(model, n_neighbors=10)
    embedding = mdata.obsm["X_spvi_all"]
    assert embedding.shape == (mdata.n_obs, 8 + 4 + 4)
    assert np.isfinite(embedding).all()
    # protein-only cells: their RNA-private block at its prior mean 0; paired cells: their posterior means
    protein_only = (~mdata.obs["has_rna"].astype(bool)).to_numpy()
    assert (embedding[protein_only, 8:12] == 0).all()
    np.testing.assert_allclose(embedding[~protein_only, 8:12], mdata.obsm["X_spvi_private_rna"][~protein_only])
    distances = mdata.obsp["distances"]
    assert distances.shape == (mdata.n_obs, mdata.n_obs)
    assert (distances.getnnz(axis=1) == 9).all()  # n_neighbors - 1 neighbours besides the cell itself
    sc.tl.umap(mdata, random_state=0)
    assert np.isfinite(mdata.obsm["X_umap"]).all()
    spvi.tl.neighbors(model, use_rep="shared", key_added="spvi_shared")
    assert mdata.uns["spvi_shared"]["params"]["use_rep"] == "X_spvi_shared"
    with pytest.raises(ValueError, match="use_rep must be"):
        spvi.tl.neighbors(model, use_rep="private_rna")


# ---------------------------------------------------------------------- feature associations
def test_feature_associations_rank_the_ighv_features_on_z_shared(cll):
    mdata, model, _ = cll
    table = spvi.tl.feature_associations(model, "rna", n_top=10, feature_names="symbol", inplace=False)
    assert list(table.columns) == ["dimension", "feature", "name", "correlation", "gradient", "rank"]
    assert list(pd.unique(table["dimension"])) == ["shared_0", "shared_1"]
    assert len(table) == 2 * 10
    assert table["correlation"].between(-1, 1).all()
    assert np.isfinite(table["gradient"]).all()
    for _, block in table.groupby("dimension"):
        assert list(block["rank"]) == list(range(1, 11))
        assert (np.diff(block["correlation"].abs().to_numpy()) <= 1e-12).all()
    assert (table["name"] == mdata["rna"].var.loc[table["feature"], "symbol"].astype(str).to_numpy()).all()

    # the correlation is the plain Pearson correlation of the posterior mean with the feature
    z = model.get_latent_representation(kind="shared")
    first = table.iloc[0]
    x = mdata["rna"][:, first["feature"]].X.ravel()
    assert first["correlation"] == pytest.approx(np.corrcoef(z[:, 0], x)[0, 1], abs=1e-6)

    # z_shared is driven by the IGHV-associated features, the private block much less so
    is_shared = mdata["rna"].var["is_shared"]
    assert is_shared[table["feature"]].mean() >= 0.8
    private = spvi.tl.feature_associations(model, "rna", kind="private", n_top=10, inplace=False)
    assert list(pd.unique(private["dimension"])) == ["private_rna_0", "private_rna_1"]
    assert is_shared[private["feature"]].mean() < is_shared[table["feature"]].mean() - 0.3


def test_feature_associations_gradient_matches_finite_differences(cll):
    mdata, model, _ = cll
    table = spvi.tl.feature_associations(model, "meth", rank_by="gradient", inplace=False)
    ranked = table[table["dimension"] == "shared_1"]
    assert (np.diff(ranked["gradient"].abs().to_numpy()) <= 1e-12).all()
    # finite differences of the decoder mean along shared dimension 1 at the posterior means, averaged over cells
    module = model.module
    z = torch.as_tensor(model.get_latent_representation(kind="all"), dtype=torch.float32)
    columns = [0, 1, 2 + 2, 2 + 3]  # z_shared, then the private block of meth (after rna's)
    z_meth = z[:, columns]
    step = torch.zeros_like(z_meth)
    step[:, 1] = 1e-3
    library = torch.ones(len(z), 1)
    marginal = torch.zeros(len(z), 1, dtype=torch.bool)
    batch = torch.zeros(len(z), 1, dtype=torch.long)
    decoder = module.decoders[1]
    with torch.no_grad():  # the mean on the user's scale (the decoder's loc is in standardised units)
        up = decoder.likelihood.expected_value(decoder(z_meth + step, library, marginal, batch))
        down = decoder.likelihood.expected_value(decoder(z_meth - step, library, marginal, batch))
    expected = ((up - down) / 2e-3).mean(dim=0).numpy()
    observed = ranked.set_index("feature")["gradient"].reindex(mdata["meth"].var_names).to_numpy()
    np.testing.assert_allclose(observed, expected, atol=2e-3)


def test_feature_associations_errors(cll):
    _, model, _ = cll
    with pytest.raises(ValueError, match="kind must be"):
        spvi.tl.feature_associations(model, "rna", kind="all")
    with pytest.raises(ValueError, match="rank_by must be"):
        spvi.tl.feature_associations(model, "rna", rank_by="pvalue")
    with pytest.raises(ValueError, match="not a column of mdata"):
        spvi.tl.feature_associations(model, "rna", feature_names="gene_name")
    with pytest.raises(ValueError, match="n_top must be"):
        spvi.tl.feature_associations(model, "rna", n_top=0)


# ---------------------------------------------------------------------- cross-modal prediction quality
def test_prediction_quality_gaussian_is_cross_modal_r2(cll):
    mdata, model, _ = cll
    quality = spvi.tl.prediction_quality(model, "rna", "meth", inplace=False)
    assert list(quality.index) == list(mdata["meth"].var_names)
    assert set(quality["metric"]) == {"r2"}
    np.testing.assert_allclose(quality["score"], spvi.tl.cross_modal_r2(model, "rna", "meth"), atol=1e-10)
    shared = mdata["meth"].var["is_shared"].to_numpy(dtype=bool)
    assert quality["score"][shared].mean() > 0.3
    assert quality["score"][shared].mean() > quality["score"][~shared].mean()


def test_prediction_quality_counts_on_the_paired_cells(cite):
    mdata, model = cite
    quality = spvi.tl.prediction_quality(model, "rna", "protein", inplace=False)
    assert len(quality) == mdata["protein"].n_vars
    assert set(quality["metric"]) == {"pearson"}
    assert quality["score"].dropna().between(-1, 1).all()
    assert quality["score"].quantile(0.9) > 0.4  # the informative markers are predicted from RNA
    # Pearson on log-normalised values of the 800 cells that have both modalities
    paired = mdata.obs["paired"].to_numpy(dtype=bool)
    counts = mdata["protein"][mdata.obs_names[paired]].layers["counts"].toarray().astype(float)
    prediction = model.predict(source="rna", target="protein", return_numpy=True)[paired]
    scale = np.median(counts.sum(axis=1))

    def normalise(x):
        return np.log1p(x / x.sum(axis=1, keepdims=True) * scale)

    np.testing.assert_allclose(
        quality["score"], pearson_per_feature(normalise(counts), normalise(prediction)), atol=1e-5
    )
    with pytest.raises(ValueError, match="also a source"):
        spvi.tl.prediction_quality(model, ["rna", "protein"], "protein")


# ---------------------------------------------------------------------- label association
def test_label_association_z_shared_carries_ighv(cll):
    mdata, model, train = cll
    table = spvi.tl.label_association(model, "IGHV_status", train=train, inplace=False)
    assert list(table.index) == ["shared", "private_rna", "private_meth"]
    assert list(table.columns) == ["auc", "knn_accuracy", "n_train", "n_test"]
    assert (table["n_train"] == len(train)).all()
    assert (table["n_test"] == mdata.n_obs - len(train)).all()
    assert table[["auc", "knn_accuracy"]].stack().between(0, 1).all()
    assert table.loc["shared", "auc"] > 0.85
    assert table.loc["shared", "auc"] > table.loc["private_rna", "auc"] + 0.1
    assert table.loc["shared", "auc"] > table.loc["private_meth", "auc"] + 0.1

    random_split = spvi.tl.label_association(
        model, "IGHV_status", blocks=["shared"], test_size=0.5, random_state=1, inplace=False
    )
    assert list(random_split.index) == ["shared"]
    assert random_split.loc["shared", "n_test"] == mdata.n_obs // 2


def test_label_association_skips_cells_without_the_block(cite):
    mdata, model = cite
    table = spvi.tl.label_association(model, "cell_type", n_neighbors=10, inplace=False)
    total = table["n_train"] + table["n_test"]
    assert total["shared"] == mdata.n_obs
    assert total["private_rna"] == mdata["rna"].n_obs
    assert total["private_protein"] == mdata["protein"].n_obs
    assert table.loc["shared", "knn_accuracy"] > 0.5


def test_label_association_errors(cll):
    mdata, model, train = cll
    with pytest.raises(ValueError, match="not a column of mdata.obs"):
        spvi.tl.label_association(model, "ighv")
    with pytest.raises(ValueError, match="unknown latent block"):
        spvi.tl.label_association(model, "IGHV_status", blocks=["private_atac"])
    with pytest.raises(ValueError, match="not cells of the MuData"):
        spvi.tl.label_association(model, "IGHV_status", train=["patient_x", *train[:3]])
    with pytest.raises(ValueError, match="one entry per cell"):
        spvi.tl.label_association(model, "IGHV_status", train=np.ones(3, dtype=bool))


# ---------------------------------------------------------------------- history, UMAP, untrained models
def test_training_history_has_each_term(cite):
    _, model = cite
    history = spvi.tl.training_history(model)
    assert list(history.columns) == ["epoch", "metric", "split", "value"]
    for metric in ("elbo", "reconstruction_rna", "reconstruction_protein", "kl_local"):
        for split in ("train", "validation"):
            curve = history[(history["metric"] == metric) & (history["split"] == split)]
            assert len(curve) == 25, (metric, split)
            assert np.isfinite(curve["value"]).all()
    elbo = history[(history["metric"] == "elbo") & (history["split"] == "train")]["value"].to_numpy()
    assert elbo[-1] < elbo[0]


def test_latent_umap_writes_one_embedding_per_block(cite):
    mdata, model = cite
    keys = spvi.tl.latent_umap(model, blocks=["shared", "private_protein"], n_neighbors=10)
    assert keys == ["X_umap_spvi_shared", "X_umap_spvi_private_protein"]
    assert "X_spvi_shared" in mdata.obsm
    assert "X_spvi_private_rna" in mdata.obsm
    assert np.isfinite(mdata.obsm["X_umap_spvi_shared"]).all()
    private = mdata.obsm["X_umap_spvi_private_protein"]
    assert private.shape == (mdata.n_obs, 2)
    np.testing.assert_array_equal(np.isfinite(private).all(axis=1), mdata.obs["has_protein"].to_numpy(dtype=bool))
    with pytest.raises(ValueError, match="unknown latent block"):
        spvi.tl.latent_umap(model, blocks=["private"])


def test_untrained_model_is_refused(cll):
    mdata, _, _ = cll
    model = spvi.SPVI(mdata, n_shared=2, n_private=2)
    with pytest.raises(ValueError, match="not trained"):
        spvi.tl.variance_explained(model)
    with pytest.raises(TypeError, match="spvi.SPVI"):
        spvi.tl.label_association(mdata, "IGHV_status")


@pytest.mark.parametrize("likelihood", ["nb", "poisson", "bernoulli"])
def test_null_deviance_is_the_intercept_only_maximum_likelihood_fit(likelihood):
    from spvi.tl import _null_deviance, _unit_deviance

    rng = np.random.default_rng(0)
    library = rng.uniform(0.2, 0.9, size=(300, 1)) if likelihood == "bernoulli" else rng.uniform(50, 500, (300, 1))
    if likelihood == "bernoulli":
        x = (rng.uniform(size=(300, 3)) < library * np.array([0.1, 0.5, 0.9])).astype(float)
    else:
        x = rng.negative_binomial(2.0, 2.0 / (2.0 + library * np.array([0.001, 0.01, 0.05])), size=(300, 3))
    x, library = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(library)
    theta = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)
    null = _null_deviance(likelihood, x, library, theta).numpy()
    link = (lambda c: 1 / (1 + np.exp(-c))) if likelihood == "bernoulli" else np.exp
    for g in range(3):

        def deviance(c, g=g):
            mean = torch.as_tensor(library[:, 0].numpy() * link(c))
            return float(_unit_deviance(likelihood, x[:, g], mean, theta[g]).sum())

        best = minimize_scalar(deviance, bounds=(-12.0, 12.0), method="bounded", options={"xatol": 1e-10})
        assert null[g] == pytest.approx(best.fun, rel=1e-6)
