"""Query mapping on the CITE mosaic: reference = batches p1-p3, query = p4 (scArches surgery)."""

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import spvi
from spvi._constants import PRESENCE_OBSM_KEY

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_checkpointing": False}


def _subset(mdata: md.MuData, names, modalities=("rna", "protein")) -> md.MuData:
    mods = {m: mdata[m][mdata[m].obs_names.isin(names)].copy() for m in modalities}
    with md.set_options(pull_on_update=False):
        out = md.MuData(mods)
    for key in ("batch", "cell_type", "paired"):
        out.obs[key] = mdata.obs.loc[out.obs_names, key].astype(str).to_numpy()
    return out


@pytest.fixture(scope="module")
def cite_split():
    mdata = spvi.datasets.pbmc_cite_mosaic()
    query = mdata.obs["batch"] == "p4_0"
    return _subset(mdata, mdata.obs_names[~query]), _subset(mdata, mdata.obs_names[query])


@pytest.fixture(scope="module")
def reference(cite_split):
    """A reference with the batch and a covariate after it (``paired``) in encoders and decoders."""
    reference_data, _ = cite_split
    spvi.SPVI.setup_mudata(
        reference_data,
        layers={"rna": "counts", "protein": "counts"},
        likelihoods={"protein": "nbmixture"},
        batch_key="batch",
        categorical_covariate_keys=["paired"],
    )
    model = spvi.SPVI(reference_data, n_shared=4, n_private=2, n_hidden=32, encode_covariates=True)
    model.train(max_epochs=2, **TRAIN_KWARGS)
    return model


def test_surgery_trains_only_the_new_batch_columns(reference, cite_split):
    reference_data, query_data = cite_split
    query = spvi.SPVI.load_query_data(query_data, reference)
    assert not query.is_trained
    batches = query.adata_manager.get_state_registry("batch").categorical_mapping
    assert list(batches) == ["p1_0", "p2_0", "p3_0", "p4_0"]
    trainable = {name for name, p in query.module.named_parameters() if p.requires_grad}
    assert trainable == {f"{part}.trunk.fc_layers.Layer 0.0.weight" for part in ("encoders.0", "encoders.1")} | {
        f"{part}.trunk.fc_layers.Layer 0.0.weight" for part in ("decoders.0", "decoders.1")
    }
    before = {k: v.clone() for k, v in query.module.state_dict().items()}
    query.train(max_epochs=2, **TRAIN_KWARGS)
    reference_state = reference.module.state_dict()
    for key, value in query.module.state_dict().items():
        if key not in trainable:
            torch.testing.assert_close(value, reference_state[key], rtol=0, atol=0)
            continue
        # input columns, then batch p1 p2 p3 [p4], then paired False True: only the p4 column moved
        n_in = value.shape[1] - 6
        new_column = n_in + 3
        kept = [c for c in range(value.shape[1]) if c != new_column]
        torch.testing.assert_close(value[:, kept], reference_state[key], rtol=0, atol=0)
        assert not torch.equal(value[:, new_column], before[key][:, new_column])
    # the grafted columns keep their meaning: the query model reproduces the reference on reference cells
    pd.testing.assert_frame_equal(
        query.predict(source="rna", target="protein", mdata=reference_data),
        reference.predict(source="rna", target="protein", mdata=reference_data),
    )
    z = query.get_latent_representation()
    assert z.shape == (400, 4)
    assert np.isfinite(z).all()


def test_query_with_one_modality_from_a_saved_reference(reference, cite_split, tmp_path):
    reference.save(tmp_path / "reference")
    _, query_data = cite_split
    rna_only = _subset(query_data, query_data.obs_names, modalities=("rna",))
    query = spvi.SPVI.load_query_data(rna_only, str(tmp_path / "reference"))
    np.testing.assert_array_equal(query.adata.obsm[PRESENCE_OBSM_KEY], np.tile([1.0, 0.0], (400, 1)))
    query.train(max_epochs=1, **TRAIN_KWARGS)
    assert query.get_latent_representation().shape == (400, 4)
    assert np.isnan(query.get_latent_representation(kind="private", modality="protein")).all()


def test_unseen_batch_points_to_load_query_data(reference, cite_split):
    with pytest.raises(ValueError, match="p4_0 not found.*SPVI.load_query_data"):
        reference.get_latent_representation(cite_split[1])


def test_prepare_query_mudata_pads_and_reorders_features(reference, cite_split):
    _, query_data = cite_split
    genes = reference.adata.mod["rna"].var_names
    kept = genes[np.random.default_rng(0).permutation(len(genes))[:350]]  # 70% of the genes, shuffled
    query = _subset(query_data, query_data.obs_names)
    query.mod["rna"] = query["rna"][:, kept].copy()
    with md.set_options(pull_on_update=False):
        query.update()
    original_rna = query["rna"]
    names = spvi.SPVI.prepare_query_mudata(query, reference, return_reference_var_names=True)
    assert names["rna"].equals(genes)
    assert names["protein"].equals(reference.adata.mod["protein"].var_names)

    with pytest.warns(UserWarning, match=r"modality 'rna' of the query has 350 of the reference's 500 features"):
        padded = spvi.SPVI.prepare_query_mudata(query, reference, inplace=False)
    assert query["rna"].var_names.equals(kept)  # not changed
    assert padded["rna"].var_names.equals(genes)
    for layer in (padded["rna"].X, padded["rna"].layers["counts"]):
        frame = pd.DataFrame(layer.toarray(), columns=genes)
        assert (frame.loc[:, ~genes.isin(kept)] == 0).all().all()
        np.testing.assert_array_equal(frame[kept].to_numpy(), query["rna"].layers["counts"].toarray())

    with pytest.warns(UserWarning, match="350 of the reference's 500"):
        assert spvi.SPVI.prepare_query_mudata(query, reference) is None
    assert query["rna"] is original_rna
    assert query["rna"].var_names.equals(genes)
    assert query.n_vars == 500 + 224
    assert spvi.SPVI.load_query_data(query, reference).get_latent_representation().shape == (400, 4)

    query.mod["rna"].var_names = [f"unknown{i}" for i in range(500)]
    with pytest.raises(ValueError, match="modality 'rna' of the query has none of the reference's 500 features"):
        spvi.SPVI.prepare_query_mudata(query, reference)


def test_inplace_subset_query_vars(reference, cite_split):
    _, query_data = cite_split
    query = _subset(query_data, query_data.obs_names)
    genes = reference.adata.mod["rna"].var_names
    query.mod["rna"] = query["rna"][:, genes[::-1]].copy()
    with md.set_options(pull_on_update=False):
        query.update()
    model = spvi.SPVI.load_query_data(adata=query, reference_model=reference, inplace_subset_query_vars=True)
    assert query["rna"].var_names.equals(genes)
    assert sp.issparse(query["rna"].X)
    assert model.adata.mod["rna"].var_names.equals(genes)
