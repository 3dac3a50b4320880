"""Downstream analysis on real data: denoised expression, differential expression, posterior predictive samples,
ELBO, reconstruction error and marginal log-likelihood (the PBMC CITE-seq mosaic, 10x Multiome, TCGA)."""

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

import spvi
from spvi._likelihoods import LIKELIHOODS
from spvi._module import product_of_experts

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False}

#: B-cell genes (immunoglobulins, BCR components, B-cell transcription and signalling; PanglaoDB / Azimuth PBMC)
B_CELL_GENES = {
    "MS4A1", "CD79A", "CD79B", "CD19", "CD22", "BANK1", "PAX5", "BLK", "FCRLA", "FCER2", "VPREB3", "TCL1A",
    "LINC00926", "RALGPS2", "TNFRSF13C", "CD72", "SPIB", "IGHM", "IGHD", "IGKC", "IGLC1", "IGLC2", "IGLC3",
    "IGHA1", "IGHG1", "JCHAIN", "HLA-DQA1", "HLA-DQB1", "CD74",
}  # fmt: skip
#: B-cell surface proteins of the panel: CD19, CD20, CD21, CD22, CD24, CD40, CD72, CD79a/b, IgD, IgM, BAFF-R (CD268),
#: TACI (CD267), CXCR5 (CD185), FcRL (CD307), BTLA (CD272, highest on B cells), HLA-DR, and CD1c (marginal-zone-like
#: blood B cells)
B_CELL_PROTEINS = {
    "cd19", "cd20", "cd21", "cd22", "cd24", "cd40", "cd72", "cd79a", "cd79b", "igd", "igm", "cd268", "cd267",
    "cd185", "cd307c.fcrl3", "cd307d", "cd307e", "cd272", "hla.dr", "cd1c",
}  # fmt: skip
DE_COLUMNS = [
    "proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "pseudocounts", "delta", "lfc_mean",
    "lfc_median", "lfc_std", "lfc_min", "lfc_max", "raw_mean1", "raw_mean2", "non_zeros_proportion1",
    "non_zeros_proportion2", "raw_normalized_mean1", "raw_normalized_mean2", "is_de_fdr_0.05", "comparison",
    "group1", "group2",
]  # fmt: skip


@pytest.fixture(scope="module")
def cite():
    """MMVAE++ on the CITE-seq mosaic (400 RNA-only, 400 protein-only, 800 paired cells), 30 epochs at lr 3e-3."""
    md.set_options(pull_on_update=False)
    mdata = spvi.datasets.pbmc_cite_mosaic()
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(
        mdata,
        modalities=["rna", "protein"],
        layers={"rna": "counts", "protein": "counts"},
        likelihoods={"rna": "nb", "protein": "nbmixture"},
        batch_key="batch",
    )
    model = spvi.SPVI(mdata, n_shared=10, n_private=5)
    model.train(
        max_epochs=30, lr=3e-3, train_size=0.9, check_val_every_n_epoch=30, **TRAIN_KWARGS
    )  # validated at the end
    return mdata, model


def _present(mdata: md.MuData, modality: str) -> np.ndarray:
    return mdata.obs_names.isin(mdata[modality].obs_names)


def _seeded(function, *args, **kwargs):
    """Call with the same random state every time, so that two calls draw the same posterior samples."""
    torch.manual_seed(0)
    return function(*args, **kwargs)


# ---------------------------------------------------------------------- denoised expression
def test_normalized_expression_names_scale_and_library_size(cite):
    mdata, model = cite
    rna = _seeded(model.get_normalized_expression, modality="rna")
    assert isinstance(rna, pd.DataFrame)
    assert rna.shape == (1600, 500)
    assert rna.index.equals(mdata.obs_names)
    assert rna.columns.equals(mdata["rna"].var_names)
    assert np.isfinite(rna.to_numpy()).all()
    assert (rna.to_numpy() > 0).all()
    np.testing.assert_allclose(rna.sum(axis=1), 1.0, rtol=1e-4)  # frequencies: library_size=1
    scaled = _seeded(model.get_normalized_expression, modality="rna", library_size=1e4)
    np.testing.assert_allclose(scaled.to_numpy(), 1e4 * rna.to_numpy(), rtol=1e-4)

    latent = model.get_normalized_expression(modality="rna", library_size="latent")
    has_rna = _present(mdata, "rna")
    observed = pd.Series(np.asarray(mdata["rna"].layers["counts"].sum(axis=1)).ravel(), index=mdata["rna"].obs_names)
    np.testing.assert_allclose(latent.sum(axis=1)[has_rna], observed[mdata.obs_names[has_rna]], rtol=1e-3)
    np.testing.assert_allclose(latent.sum(axis=1)[~has_rna], float(model.module.library_median[0]), rtol=1e-3)

    protein = _seeded(model.get_normalized_expression, modality="protein")
    with_background = _seeded(model.get_normalized_expression, modality="protein", include_protein_background=True)
    assert protein.shape == (1600, 224)
    assert (protein.to_numpy() >= 0).all()
    assert (with_background.to_numpy() >= protein.to_numpy()).all()  # the background only adds
    assert (with_background.to_numpy() > protein.to_numpy()).mean() > 0.99

    genes = ["MS4A1", "CD79A", "PPBP"]
    subset = model.get_normalized_expression(modality="rna", gene_list=genes, indices=[0, 5, 7])
    assert subset.shape == (3, 3)
    assert set(subset.columns) == set(genes)
    assert subset.index.tolist() == mdata.obs_names[[0, 5, 7]].tolist()
    draws = model.get_normalized_expression(modality="rna", n_samples=3, return_mean=False, indices=range(10))
    assert isinstance(draws, np.ndarray)
    assert draws.shape == (3, 10, 500)
    assert not np.allclose(draws[0], draws[1])  # posterior draws, not the mean


@pytest.mark.filterwarnings("ignore:.*constant features:UserWarning", "ignore:Category .* has fewer than 3 cells")
def test_cells_lacking_the_modality_get_its_imputation_from_the_others(cite):
    mdata, model = cite
    has_rna, has_protein = _present(mdata, "rna"), _present(mdata, "protein")
    rna = model.get_normalized_expression(modality="rna")
    assert np.isfinite(rna[~has_rna].to_numpy()).all()
    np.testing.assert_allclose(rna[~has_rna].sum(axis=1), 1.0, rtol=1e-4)
    from_protein = model.get_normalized_expression(modality="rna", source="protein")
    assert np.isnan(from_protein[~has_protein].to_numpy()).all()  # nothing to decode from
    assert np.isfinite(from_protein[has_protein].to_numpy()).all()

    # a paired cell decoded from its protein alone is the same cell with its RNA removed
    paired = mdata.obs_names[has_rna & has_protein][:40]
    rna_only = mdata.obs_names[has_rna & ~has_protein][:1]
    cells = rna_only.append(paired)  # the order of the MuData built without the paired cells' RNA
    full = md.MuData({"rna": mdata["rna"][cells].copy(), "protein": mdata["protein"][paired].copy()})
    without_rna = md.MuData({"rna": mdata["rna"][rna_only].copy(), "protein": mdata["protein"][paired].copy()})
    for data in (full, without_rna):
        data.obs["batch"] = mdata.obs.loc[data.obs_names, "batch"]
    decoded_from_protein = _seeded(model.get_normalized_expression, full, modality="rna", source="protein")
    imputed = _seeded(model.get_normalized_expression, without_rna, modality="rna")
    np.testing.assert_allclose(decoded_from_protein.loc[paired], imputed.loc[paired], rtol=1e-5)


def test_transform_batch_decodes_in_another_batch(cite):
    mdata, model = cite
    cells = np.flatnonzero(mdata.obs["batch"].to_numpy() == "p3_0")[:50]
    own = _seeded(model.get_normalized_expression, modality="rna", indices=cells)
    same = _seeded(model.get_normalized_expression, modality="rna", indices=cells, transform_batch="p3_0")
    other = _seeded(model.get_normalized_expression, modality="rna", indices=cells, transform_batch="p4_0")
    np.testing.assert_allclose(same, own, rtol=1e-6)
    assert np.abs(np.log(other.to_numpy() / own.to_numpy())).mean() > 0.01
    with pytest.raises(ValueError, match="not a valid batch category"):
        model.get_normalized_expression(modality="rna", transform_batch="p9_0")


def test_normalized_expression_errors(cite):
    _, model = cite
    with pytest.raises(ValueError, match=r"modality must name modalities the model was trained on \['rna', 'prot"):
        model.get_normalized_expression(modality="atac")
    with pytest.raises(ValueError, match="source must name modalities"):
        model.get_normalized_expression(modality="rna", source="adt")
    for library_size in (0, -1.0, "observed", None, float("nan")):
        with pytest.raises(ValueError, match="library_size must be 'latent' or a positive number"):
            model.get_normalized_expression(modality="rna", library_size=library_size)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        model.get_normalized_expression(modality="rna", n_samples=0)
    with pytest.raises(ValueError, match=r"gene_list names features that modality 'rna' does not have: \['NOTAGENE'\]"):
        model.get_normalized_expression(modality="rna", gene_list=["MS4A1", "NOTAGENE"])


# ---------------------------------------------------------------------- differential expression
def test_differential_expression_finds_b_cell_markers_in_rna_and_protein(cite):
    mdata, model = cite
    scvi.settings.seed = 0
    rna = model.differential_expression(groupby="cell_type", group1="B", modality="rna", silent=True)
    protein = model.differential_expression(groupby="cell_type", group1="B", modality="protein", silent=True)
    print("\nB vs rest, RNA:\n", rna.head(10)[["proba_de", "lfc_mean", "raw_mean1", "raw_mean2"]])
    print("B vs rest, protein:\n", protein.head(10)[["proba_de", "lfc_mean", "raw_mean1", "raw_mean2"]])
    for result, features, markers in ((rna, 500, B_CELL_GENES), (protein, 224, B_CELL_PROTEINS)):
        assert list(result.columns) == DE_COLUMNS
        assert len(result) == features
        assert (result["comparison"] == "B vs Rest").all()
        assert result["proba_de"].is_monotonic_decreasing
        assert result["proba_de"].between(0, 1).all()
        top = result.head(10)
        assert len(set(top.index) & markers) >= 8, top.index.tolist()
        assert (top["lfc_mean"] > 1).all()
        assert (top["raw_mean1"] > top["raw_mean2"]).all()
    assert rna.head(10)["is_de_fdr_0.05"].all()

    # raw statistics come from the B cells that have the modality; all B cells take part through imputation
    is_b = mdata.obs["cell_type"] == "B"
    rna_b = mdata["rna"][mdata["rna"].obs_names.isin(mdata.obs_names[is_b])]
    counts = rna_b.layers["counts"][:, rna_b.var_names.get_loc("MS4A1")].toarray().ravel()
    assert rna.loc["MS4A1", "raw_mean1"] == pytest.approx(counts.mean(), rel=1e-6)
    assert rna.loc["MS4A1", "non_zeros_proportion1"] == pytest.approx((counts > 0).mean(), rel=1e-6)
    assert protein["raw_normalized_mean1"].isna().all()  # protein counts are not library-normalised (totalVI)


def test_differential_expression_groups_selections_and_errors(cite):
    mdata, model = cite
    result = model.differential_expression(
        groupby="cell_type", group1=["B", "NK"], group2="Mono", modality="protein", silent=True
    )
    assert result["comparison"].value_counts().to_dict() == {"B vs Mono": 224, "NK vs Mono": 224}
    assert "_spvi_de_group" not in model.adata.obs  # the temporary column is removed
    corrected = model.differential_expression(
        groupby="cell_type", group1="B", modality="protein", batch_correction=True, silent=True
    )
    assert corrected.head(10).index.isin(list(B_CELL_PROTEINS)).sum() >= 7  # decoded in each of the four batches

    scvi.settings.seed = 0
    by_group = model.differential_expression(groupby="cell_type", group1="NK", modality="rna", silent=True)
    scvi.settings.seed = 0
    by_query = model.differential_expression(idx1="cell_type == 'NK'", modality="rna", silent=True)
    pd.testing.assert_series_equal(by_group["proba_de"], by_query["proba_de"])
    is_nk = (mdata.obs["cell_type"] == "NK").to_numpy()
    scvi.settings.seed = 0
    by_mask = model.differential_expression(idx1=is_nk, idx2=~is_nk, modality="rna", mode="vanilla", silent=True)
    assert {"proba_m1", "proba_m2", "bayes_factor"} <= set(by_mask.columns)
    assert by_mask["bayes_factor"].is_monotonic_decreasing

    with pytest.raises(ValueError, match="pass groupby= .* or idx1="):
        model.differential_expression(modality="rna")
    with pytest.raises(ValueError, match="groupby 'celltype' is not a column of mdata.obs"):
        model.differential_expression(groupby="celltype", modality="rna")
    with pytest.raises(ValueError, match="modality must name modalities"):
        model.differential_expression(groupby="cell_type", modality="adt")


# ---------------------------------------------------------------------- posterior predictive samples
def test_posterior_predictive_sample_matches_the_denoised_mean(cite):
    mdata, model = cite
    one = model.posterior_predictive_sample(modality="protein")
    assert isinstance(one, np.ndarray)
    assert one.shape == (1600, 224)
    assert (one >= 0).all()
    assert np.array_equal(one, np.round(one))
    cells = np.arange(0, 1600, 4)
    draws = model.posterior_predictive_sample(modality="protein", n_samples=10, indices=cells)
    assert draws.shape == (400, 224, 10)
    mean = model.get_normalized_expression(
        modality="protein", include_protein_background=True, n_samples=10, library_size="latent", indices=cells
    ).to_numpy()
    expressed = mean.mean(axis=0) > 1
    standard_error = draws.std(axis=(0, 2))[expressed] / np.sqrt(400 * 10)
    z = (draws.mean(axis=(0, 2))[expressed] - mean.mean(axis=0)[expressed]) / standard_error
    assert expressed.sum() > 150
    assert np.abs(z).max() < 5, np.abs(z).max()  # the draws' mean is the mixture's mean
    has_protein = _present(mdata, "protein")[cells]
    assert draws[~has_protein].sum() > 0  # cells without protein get draws of their imputation
    genes = model.posterior_predictive_sample(modality="rna", gene_list=["MS4A1", "PPBP"], indices=range(30))
    assert genes.shape == (30, 2)


# ---------------------------------------------------------------------- scores
def test_elbo_and_reconstruction_error_per_modality(cite):
    mdata, model = cite
    errors = model.get_reconstruction_error()
    assert set(errors) == {"reconstruction_rna", "reconstruction_protein"}
    assert all(isinstance(v, float) and v > 0 for v in errors.values())
    per_cell = model.get_reconstruction_error(return_mean=False)
    for modality in ("rna", "protein"):
        values = per_cell[f"reconstruction_{modality}"].numpy()
        assert values.shape == (1600,)
        np.testing.assert_array_equal(np.isnan(values), ~_present(mdata, modality))
    elbo = model.get_elbo(return_mean=False)
    assert elbo.shape == (1600,)
    assert torch.isfinite(elbo).all()
    assert (elbo < 0).all()
    # the ELBO is the one the training reports for the validation cells
    validation = model.validation_indices
    reported = model.history["elbo_validation"]["elbo_validation"].iloc[-1]
    assert -model.get_elbo(indices=validation) == pytest.approx(reported, rel=0.02)


def test_marginal_ll_is_finite_and_above_the_elbo(cite):
    mdata, model = cite
    has_rna, has_protein = _present(mdata, "rna"), _present(mdata, "protein")
    groups = {
        "rna only": has_rna & ~has_protein,
        "protein only": ~has_rna & has_protein,
        "paired": has_rna & has_protein,
    }
    cells = np.concatenate([np.flatnonzero(mask)[:60] for mask in groups.values()])
    torch.manual_seed(0)
    log_px = model.get_marginal_ll(indices=cells, n_mc_samples=50, return_mean=False)
    single_sample = model.get_marginal_ll(indices=cells, n_mc_samples=1, return_mean=False)
    elbo = model.get_elbo(indices=cells, return_mean=False)
    assert log_px.shape == (180,)
    assert torch.isfinite(log_px).all()
    for g, name in enumerate(groups):
        rows = slice(60 * g, 60 * (g + 1))
        print(
            f"{name}: log p(x) {log_px[rows].mean():.1f}, K=1 {single_sample[rows].mean():.1f}, ELBO {elbo[rows].mean():.1f}"
        )
        assert log_px[rows].mean() > elbo[rows].mean()
        assert log_px[rows].mean() > single_sample[rows].mean()  # the bound tightens with the number of samples
    with pytest.raises(ValueError, match="n_mc_samples must be a positive int"):
        model.get_marginal_ll(n_mc_samples=0)


@pytest.mark.parametrize("objective", spvi.OBJECTIVES)
def test_draws_and_density_of_every_objectives_joint_posterior(objective):
    md.set_options(pull_on_update=False)
    mdata = spvi.datasets.pbmc_cite_mosaic()
    kinds = [_present(mdata, "rna") & ~_present(mdata, "protein"), ~_present(mdata, "rna"), mdata.obs["paired"]]
    cells = np.concatenate([np.flatnonzero(np.asarray(kind, dtype=bool))[:50] for kind in kinds])
    mdata = mdata[mdata.obs_names[cells]].copy()
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(mdata, modalities=["rna", "protein"], layers={"rna": "counts", "protein": "counts"})
    model = spvi.SPVI(mdata, n_shared=3, n_private=2, objective=objective)
    model.train(max_epochs=1, **TRAIN_KWARGS)
    module = model.module.eval()
    tensors = next(iter(model._make_data_loader(model.adata, batch_size=150)))
    with torch.no_grad():
        outputs = module.inference(**module._get_inference_input(tensors))
        qz, presence = outputs["qz_shared"], outputs["presence"]
        z = module.sample_shared_posterior(qz, presence, 4000)
        log_q = module.shared_posterior_log_prob(qz, presence, z[:3])
    # the draws' mean is the embedding; the density is the objective's posterior written out
    torch.testing.assert_close(z.mean(dim=0), module.shared_posterior_mean(qz, presence), atol=0.08, rtol=0)
    experts = [q.log_prob(z[:3]).sum(-1) for q in qz]
    paired = presence.all(dim=1)
    if objective in ("mmvae++", "mmvae"):
        expected = torch.where(paired, torch.logaddexp(*experts) - np.log(2), torch.where(presence[:, 0], *experts))
    elif objective == "mvae":
        expected = product_of_experts(qz, presence.float()).log_prob(z[:3]).sum(-1)
    else:  # MoPoE-VAE: the observed single experts (each times the prior) and, for paired cells, their product
        singles = [product_of_experts([q], torch.ones(150, 1)).log_prob(z[:3]).sum(-1) for q in qz]
        both = product_of_experts(qz, torch.ones(150, 2)).log_prob(z[:3]).sum(-1)
        expected = torch.where(
            paired, torch.logsumexp(torch.stack([*singles, both]), 0) - np.log(3), torch.where(presence[:, 0], *singles)
        )
    torch.testing.assert_close(log_q, expected, rtol=1e-4, atol=1e-4)
    log_px = model.get_marginal_ll(n_mc_samples=20, return_mean=False)
    assert torch.isfinite(log_px).all()


# ---------------------------------------------------------------------- other likelihoods
def test_accessibility_poisson_counts_and_peaks_de_on_multiome(multiome_path):
    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(multiome_path)
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(
        mdata, layers={"rna": "counts", "atac": "counts"}, likelihoods={"rna": "poisson", "atac": "bernoulli"}
    )
    model = spvi.SPVI(mdata, n_shared=4, n_private=2)
    model.train(max_epochs=5, **TRAIN_KWARGS)
    atac = _seeded(model.get_normalized_expression, modality="atac")
    assert atac.shape == (1000, 174)
    assert ((atac.to_numpy() > 0) & (atac.to_numpy() < 1)).all()
    half_depth = _seeded(model.get_normalized_expression, modality="atac", library_size=0.5)
    np.testing.assert_allclose(half_depth.to_numpy(), 0.5 * atac.to_numpy(), rtol=1e-4)
    with pytest.raises(ValueError, match=r"'atac' \(bernoulli\) .* library_size must be at most 1"):
        model.get_normalized_expression(modality="atac", library_size=2)
    peaks = model.posterior_predictive_sample(modality="atac", n_samples=2)
    assert peaks.shape == (1000, 174, 2)
    assert set(np.unique(peaks)) <= {0.0, 1.0}
    genes = model.posterior_predictive_sample(modality="rna")
    assert (genes >= 0).all()
    assert np.array_equal(genes, np.round(genes))

    first = np.arange(1000) < 500
    result = model.differential_expression(idx1=first, modality="atac", silent=True)
    assert len(result) == 174
    assert result["proba_de"].between(0, 1).all()
    assert result["scale1"].between(0, 1).all()
    assert (result["pseudocounts"] == 1e-6).all()
    detected = np.asarray((mdata["atac"].layers["counts"][:500] > 0).mean(axis=0)).ravel()
    np.testing.assert_allclose(result.loc[mdata["atac"].var_names, "non_zeros_proportion1"], detected, rtol=1e-6)
    assert np.isfinite(model.get_marginal_ll(n_mc_samples=5, indices=range(64)))


def test_gaussian_modality_on_the_users_scale_and_not_in_de(tcga_path):
    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(tcga_path)
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(mdata, modalities=["rna", "protein"])
    model = spvi.SPVI(mdata, n_shared=4, n_private=2)
    model.train(max_epochs=3, **TRAIN_KWARGS)
    denoised = model.get_normalized_expression(modality="rna", n_samples=5)
    data = np.asarray(mdata["rna"].X)
    error = np.abs(denoised.mean(axis=0).to_numpy() - data.mean(axis=0)) / data.std(axis=0)
    assert np.median(error) < 0.5  # log expression (feature means 2 to 17), not standard units
    draws = model.posterior_predictive_sample(modality="protein")
    assert draws.shape == (220, 142)
    assert np.isfinite(draws).all()
    assert (draws < 0).any()
    with pytest.raises(ValueError, match="modality 'rna' is Gaussian"):
        model.differential_expression(groupby="subtype", modality="rna")


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_each_likelihood_samples_with_its_mean(likelihood):
    torch.manual_seed(0)
    head = LIKELIHOODS[likelihood](n_hidden=8, n_output=5)
    hidden = torch.randn(4, 8).repeat(10000, 1)
    library = torch.full((hidden.shape[0], 1), 0.6 if head.learns_depth else 50.0)
    with torch.no_grad():
        params = head(hidden, library, torch.zeros(hidden.shape[0], 1, dtype=torch.bool))
        draws = head.sample(params).view(10000, 4, 5)
        mean = head.expected_value(params).view(10000, 4, 5)[0]
    assert draws.shape == (10000, 4, 5)
    assert torch.isfinite(draws).all()
    torch.testing.assert_close(draws.mean(dim=0), mean, rtol=0.1, atol=0.05 * float(mean.abs().mean()))
    if likelihood == "zinb":
        assert (head.denoised_mean(params) > head.expected_value(params)).all()  # no zero inflation


def test_sparse_matrix_input_gives_same_raw_statistics(cite):
    mdata, model = cite
    dense = mdata.copy()
    dense.mod["rna"].layers["counts"] = dense["rna"].layers["counts"].toarray()
    assert sp.issparse(mdata["rna"].layers["counts"])
    scvi.settings.seed = 0
    from_sparse = model.differential_expression(groupby="cell_type", group1="DC", modality="rna", silent=True)
    scvi.settings.seed = 0
    from_dense = model.differential_expression(dense, groupby="cell_type", group1="DC", modality="rna", silent=True)
    pd.testing.assert_series_equal(from_sparse["raw_mean1"], from_dense["raw_mean1"].loc[from_sparse.index])
