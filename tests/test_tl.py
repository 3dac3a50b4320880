"""spvi.tl on real data: CLL (mRNA + methylation, IGHV) and the PBMC CITE-seq mosaic (counts, missing modalities)."""

from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
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
    table = spvi.tl.variance_explained(model)
    assert list(table.index) == ["rna", "meth"]
    assert list(table.columns) == ["shared", "private", "shared+private"]
    assert np.isfinite(table.to_numpy()).all()
    assert (table.to_numpy() <= 1.0).all()
    # both blocks together reconstruct better than either alone, and z_shared carries more than the 2-d private block
    assert (table["shared+private"] > table["shared"]).all()
    assert (table["shared+private"] > table["private"]).all()
    assert (table["shared+private"] > 0.4).all()
    assert (table["shared"] > table["private"]).all()

    features = spvi.tl.variance_explained(model, per_feature=True)
    assert len(features) == mdata["rna"].n_vars + mdata["meth"].n_vars
    assert set(features["modality"]) == {"rna", "meth"}
    rna = features[features["modality"] == "rna"].set_index("feature")
    assert list(rna.index) == list(mdata["rna"].var_names)
    # the joint reconstruction is what predict() gives from both modalities (z_shared joint, z_private of rna)
    both = model.predict(source=["rna", "meth"], target="rna", return_numpy=True)
    np.testing.assert_allclose(rna["shared+private"], r2_per_feature(mdata["rna"].X, both), atol=1e-5)
    # the IGHV-associated features are explained by z_shared better than the others
    shared = mdata["rna"].var["is_shared"].to_numpy(dtype=bool)
    assert rna["shared"][shared].mean() > rna["shared"][~shared].mean() + 0.2


def test_variance_explained_on_counts_with_missing_modalities(cite):
    mdata, model = cite
    table = spvi.tl.variance_explained(model, modalities="protein")
    assert list(table.index) == ["protein"]
    assert (table.to_numpy() <= 1.0).all()
    # after a short training the joint reconstruction already beats either block alone (with the alignment term
    # z_shared alone comes close: measured -0.06 vs 0.02 for both blocks)
    assert table.loc["protein", "shared+private"] > table.loc["protein", "shared"]
    assert table.loc["protein", "shared+private"] > table.loc["protein", "private"] + 0.1
    with pytest.raises(ValueError, match="modalities must name modalities"):
        spvi.tl.variance_explained(model, modalities="atac")


# ---------------------------------------------------------------------- feature associations
def test_feature_associations_rank_the_ighv_features_on_z_shared(cll):
    mdata, model, _ = cll
    table = spvi.tl.feature_associations(model, "rna", n_top=10, feature_names="symbol")
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
    private = spvi.tl.feature_associations(model, "rna", kind="private", n_top=10)
    assert list(pd.unique(private["dimension"])) == ["private_rna_0", "private_rna_1"]
    assert is_shared[private["feature"]].mean() < is_shared[table["feature"]].mean() - 0.3


def test_feature_associations_gradient_matches_finite_differences(cll):
    mdata, model, _ = cll
    table = spvi.tl.feature_associations(model, "meth", rank_by="gradient")
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
    quality = spvi.tl.prediction_quality(model, "rna", "meth")
    assert list(quality.index) == list(mdata["meth"].var_names)
    assert set(quality["metric"]) == {"r2"}
    np.testing.assert_allclose(quality["score"], spvi.tl.cross_modal_r2(model, "rna", "meth"), atol=1e-10)
    shared = mdata["meth"].var["is_shared"].to_numpy(dtype=bool)
    assert quality["score"][shared].mean() > 0.3
    assert quality["score"][shared].mean() > quality["score"][~shared].mean()


def test_prediction_quality_counts_on_the_paired_cells(cite):
    mdata, model = cite
    quality = spvi.tl.prediction_quality(model, "rna", "protein")
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
    table = spvi.tl.label_association(model, "IGHV_status", train=train)
    assert list(table.index) == ["shared", "private_rna", "private_meth"]
    assert list(table.columns) == ["auc", "knn_accuracy", "n_train", "n_test"]
    assert (table["n_train"] == len(train)).all()
    assert (table["n_test"] == mdata.n_obs - len(train)).all()
    assert table[["auc", "knn_accuracy"]].stack().between(0, 1).all()
    assert table.loc["shared", "auc"] > 0.85
    assert table.loc["shared", "auc"] > table.loc["private_rna", "auc"] + 0.1
    assert table.loc["shared", "auc"] > table.loc["private_meth", "auc"] + 0.1

    random_split = spvi.tl.label_association(model, "IGHV_status", blocks=["shared"], test_size=0.5, random_state=1)
    assert list(random_split.index) == ["shared"]
    assert random_split.loc["shared", "n_test"] == mdata.n_obs // 2


def test_label_association_skips_cells_without_the_block(cite):
    mdata, model = cite
    table = spvi.tl.label_association(model, "cell_type", n_neighbors=10)
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
