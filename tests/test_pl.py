"""spvi.pl: every plot draws what it is given, labels its axes, and refuses inputs it cannot draw."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import spvi


@pytest.fixture(scope="module")
def cll():
    """MMVAE++ on CLL patients with mRNA, methylation and IGHV: the 10 top + 10 other features per modality."""
    md.set_options(pull_on_update=False)
    data = spvi.datasets.cll()
    keep = data.obs["has_rna"].astype(bool) & data.obs["has_meth"].astype(bool) & data.obs["IGHV"].notna()
    mdata = spvi.pp.select_shared_and_other(
        data[keep.to_numpy()].copy(), "IGHV_status", n_top=10, n_other=10, modalities=["rna", "meth"]
    )
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(mdata, modalities=["rna", "meth"])
    model = spvi.SPVI(mdata, n_shared=2, n_private=2)
    model.train(
        max_epochs=100, train_size=0.8, check_val_every_n_epoch=1, enable_progress_bar=False, enable_model_summary=False
    )
    return mdata, model


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(ax: Axes) -> None:
    assert ax.get_title()
    assert ax.get_xlabel()
    assert ax.get_ylabel()


def test_variance_explained_heatmap(cll):
    _, model = cll
    table = spvi.tl.variance_explained(model, inplace=False)
    ax = spvi.pl.variance_explained(table)
    assert isinstance(ax, Axes)
    _labelled(ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rna", "meth"]
    image = ax.get_images()[0]
    np.testing.assert_allclose(image.get_array(), table.to_numpy())
    # diverging colours centred on 0, so that a negative value does not look like 0
    low, high = image.get_clim()
    assert low == -high
    assert high == pytest.approx(np.abs(table.to_numpy()).max())
    assert image.get_cmap().name == "RdBu_r"
    negative, zero = (image.to_rgba(np.array([[v]]))[0, 0] for v in (-0.5 * high, 0.0))
    assert negative[0] < zero[0] - 0.2  # blue, not the white of 0
    annotations = sorted(t.get_text() for t in ax.texts)
    assert annotations == sorted(f"{v:.2f}" for v in table.to_numpy().ravel())
    assert ax.figure.axes[-1].get_ylabel() == "fraction of deviance explained"  # the colour bar

    features = spvi.tl.variance_explained(model, per_feature=True, inplace=False)
    fig, own_ax = plt.subplots()
    ax = spvi.pl.variance_explained(features, ax=own_ax, n_features=5)
    assert ax is own_ax
    best = features.sort_values("shared+private", ascending=False).head(5)
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"{m}: {f}" for m, f in zip(best.modality, best.feature, strict=True)
    ]
    with pytest.raises(ValueError, match="output of spvi.tl.variance_explained"):
        spvi.pl.variance_explained(table.drop(columns="private"))


def test_plots_read_the_results_stored_in_the_mudata(cll):
    mdata, model = cll
    with pytest.raises(ValueError, match="run spvi.tl.variance_explained"):
        spvi.pl.variance_explained(mdata.copy())
    spvi.tl.variance_explained(model)
    ax = spvi.pl.variance_explained(mdata, by="dimension")
    dimensions = mdata.uns["spvi"]["variance_explained_dimensions"]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(dimensions.index)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["rna", "meth"]
    np.testing.assert_allclose(ax.get_images()[0].get_array().filled(np.nan), dimensions.to_numpy())
    assert sum(t.get_text() == "" for t in ax.texts) == int(dimensions.isna().sum().sum())  # NaN cells left blank

    spvi.tl.feature_associations(model, "rna")
    fig = spvi.pl.feature_associations(mdata, modality="rna", n_top=3)
    table = spvi.tl.feature_associations(model, "rna", inplace=False)
    assert [ax.get_title() for ax in fig.axes] == ["shared_0", "shared_1"]
    top = table[table["dimension"] == "shared_0"].head(3)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(top["feature"])
    with pytest.raises(ValueError, match="pass modality="):
        spvi.pl.feature_associations(mdata)

    spvi.tl.label_association(model, "IGHV_status")
    ax = spvi.pl.label_association(mdata)
    np.testing.assert_allclose(
        [bar.get_height() for bar in ax.patches], mdata.uns["spvi"]["label_association"]["IGHV_status"]["auc"]
    )
    spvi.tl.prediction_quality(model, "rna", "meth")
    ax = spvi.pl.prediction_quality(mdata)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["rna → meth"]


def test_feature_associations_bars(cll):
    _, model = cll
    table = spvi.tl.feature_associations(model, "rna", feature_names="symbol", inplace=False)
    fig = spvi.pl.feature_associations(table, n_top=5)
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["shared_0", "shared_1"]
    for ax, (_, block) in zip(visible, table.groupby("dimension", sort=True), strict=True):
        _labelled(ax)
        top = block.sort_values("rank").head(5)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(top["name"])
        np.testing.assert_allclose([bar.get_width() for bar in ax.patches], top["correlation"])

    fig = spvi.pl.feature_associations(table, dimensions=["shared_1"], score="gradient", n_top=3)
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert ax.get_xlabel() == "decoder gradient"
    assert len(ax.patches) == 3
    with pytest.raises(ValueError, match="not in the table"):
        spvi.pl.feature_associations(table, dimensions=["shared_7"])
    with pytest.raises(ValueError, match="axes must hold 2"):
        spvi.pl.feature_associations(table, axes=[plt.subplots()[1]])


def test_prediction_quality_violins(cll):
    _, model = cll
    forward = spvi.tl.prediction_quality(model, "rna", "meth", inplace=False)
    backward = spvi.tl.prediction_quality(model, "meth", "rna", inplace=False)
    ax = spvi.pl.prediction_quality({"mRNA → methylation": forward, "methylation → mRNA": backward})
    _labelled(ax)
    assert ax.get_ylabel() == "R² per feature"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mRNA → methylation", "methylation → mRNA"]
    medians = [t.get_text() for t in ax.texts]
    assert medians == [f"median {forward['score'].median():.2f}", f"median {backward['score'].median():.2f}"]

    single = spvi.pl.prediction_quality(forward)
    assert [t.get_text() for t in single.get_xticklabels()] == ["rna → meth"]
    mixed = forward.assign(metric="pearson")
    with pytest.raises(ValueError, match="one metric"):
        spvi.pl.prediction_quality({"a": forward, "b": mixed})


def test_label_association_bars(cll):
    mdata, model = cll
    table = spvi.tl.label_association(model, "IGHV_status", inplace=False)
    ax = spvi.pl.label_association({"MMVAE++": table, "again": table})
    _labelled(ax)
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_allclose(heights, [*table["auc"], *table["auc"]])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(table.index)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance", "MMVAE++", "again"]

    ax = spvi.pl.label_association(table, metric="knn_accuracy")
    assert ax.get_ylabel() == "held-out kNN accuracy"
    with pytest.raises(ValueError, match="metric must be"):
        spvi.pl.label_association(table, metric="f1")


def test_training_curves_one_call(cll):
    _, model = cll
    fig = spvi.pl.training_curves(model)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4
    for ax in axes:
        _labelled(ax)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in axes]
    assert legends[0] == ["elbo (train)", "elbo (validation)"]
    assert legends[1] == ["rna (train)", "rna (validation)", "meth (train)", "meth (validation)"]
    elbo = axes[0].get_lines()[0].get_ydata()
    np.testing.assert_allclose(elbo, model.history["elbo_train"]["elbo_train"].to_numpy(dtype=float))


def test_latent_umap_side_by_side(cll):
    mdata, _ = cll
    mdata = mdata.copy()
    with pytest.raises(ValueError, match="run spvi.tl.latent_umap"):
        spvi.pl.latent_umap(mdata, "IGHV_status")
    # stand-in embeddings; a private block is missing for some cells and a label for others
    rng = np.random.default_rng(0)
    mdata.obsm["X_umap_spvi_shared"] = rng.normal(size=(mdata.n_obs, 2))
    private = rng.normal(size=(mdata.n_obs, 2))
    private[:10] = np.nan
    mdata.obsm["X_umap_spvi_private_rna"] = private
    mdata.obs["status"] = pd.Series(mdata.obs["IGHV_status"].to_numpy(dtype=object), index=mdata.obs_names)
    mdata.obs.iloc[10:15, mdata.obs.columns.get_loc("status")] = np.nan

    fig = spvi.pl.latent_umap(mdata, "status")
    shared_ax, private_ax = [ax for ax in fig.axes if ax.get_visible()]
    assert shared_ax.get_title() == f"z_shared: {mdata.n_obs} cells"
    assert private_ax.get_title() == f"z_private (rna): {mdata.n_obs - 10} cells"
    for ax in (shared_ax, private_ax):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("UMAP1", "UMAP2")
        assert sum(len(c.get_offsets()) for c in ax.collections) == int(ax.get_title().split(": ")[1].split()[0])
    assert [t.get_text() for t in private_ax.get_legend().get_texts()] == ["NA", "mutated", "unmutated"]

    fig = spvi.pl.latent_umap(mdata, "age", blocks=["shared"])
    assert fig.axes[-1].get_ylabel() == "age"  # colour bar of a numeric column
    with pytest.raises(ValueError, match="no UMAP for block"):
        spvi.pl.latent_umap(mdata, "age", blocks=["private_meth"])
    with pytest.raises(ValueError, match="not a column of mdata.obs"):
        spvi.pl.latent_umap(mdata, "IGHV status")
