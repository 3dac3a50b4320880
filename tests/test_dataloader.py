"""The in-memory data path: the same minibatches, losses, gradients and trained model as scvi-tools' AnnDataLoader."""

import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch
from scvi.dataloaders import AnnDataLoader

import spvi
from spvi._constants import data_key, nonzero_key
from spvi._dataloader import InMemoryDataLoader, _CSRRows, make_data_loader


@pytest.fixture
def cite_model(cite_path):
    """CITE-seq mosaic (sparse RNA, dense protein, batches, cells missing either modality), set up with labels."""
    mdata = md.read_h5mu(cite_path)
    spvi.SPVI.setup_mudata(mdata, likelihoods={"rna": "nb", "protein": "nbmixture"}, batch_key="batch")
    scvi.settings.seed = 0
    return spvi.SPVI(mdata, n_shared=4, n_private=2)


def _batches(loader) -> list[dict[str, torch.Tensor]]:
    return [{key: torch.as_tensor(value) for key, value in batch.items()} for batch in loader]


def test_minibatches_equal_annloader_ones(cite_model):
    manager = cite_model.adata_manager
    indices = np.random.default_rng(0).permutation(cite_model.adata.n_obs)[:700]
    torch.manual_seed(1)
    reference = _batches(AnnDataLoader(manager, indices=indices, batch_size=128, shuffle=True))
    torch.manual_seed(1)
    loader = make_data_loader(manager, indices=indices, batch_size=128, shuffle=True)
    assert isinstance(loader, InMemoryDataLoader)
    fast = _batches(loader)
    assert len(fast) == len(reference) == 6
    sparse_keys = [key for key in manager.data_registry if sp.issparse(manager.get_from_registry(key))]
    assert sorted(sparse_keys) == [data_key("protein"), data_key("rna")]
    for expected, batch in zip(reference, fast, strict=True):
        # the same arrays, and for each sparse field the positions of its non-zero entries
        assert batch.keys() == expected.keys() | {nonzero_key(key) for key in sparse_keys}
        for key, value in expected.items():
            assert batch[key].dtype == value.dtype, key
            torch.testing.assert_close(batch[key], value, rtol=0, atol=0, msg=key)
        for key in sparse_keys:
            torch.testing.assert_close(
                batch[nonzero_key(key)], batch[key].view(-1).nonzero().squeeze(1), rtol=0, atol=0
            )


@pytest.mark.parametrize("stored_dtype", [np.float64, np.float32])  # cast to float32 (a copy) or not
def test_csr_rows_add_up_duplicate_entries_and_skip_explicit_zeros(stored_dtype):
    # a non-canonical CSR matrix: row 0 stores column 2 twice and an explicit zero in column 3, row 2 is empty
    data = np.array([1.0, 2.0, 0.0, 5.0, 3.0], dtype=stored_dtype)
    matrix = sp.csr_matrix((data, np.array([2, 2, 3, 0, 1]), np.array([0, 4, 5, 5])), shape=(3, 4))
    assert not matrix.has_canonical_format
    before = matrix.copy()
    rows, nonzero = _CSRRows(matrix, np.float32).rows(torch.tensor([2, 0, 1]))
    np.testing.assert_array_equal(rows.numpy(), matrix.toarray()[[2, 0, 1]])
    np.testing.assert_array_equal(nonzero.numpy(), np.flatnonzero(rows.numpy()))
    assert np.array_equal(matrix.data, before.data)  # the user's matrix is unchanged
    assert np.array_equal(matrix.indices, before.indices)


def test_same_loss_and_gradients_on_the_same_minibatch(cite_model):
    manager, module = cite_model.adata_manager, cite_model.module
    indices = np.arange(300, 428)
    losses, gradients = [], []
    for loader in (AnnDataLoader, InMemoryDataLoader):
        batch = {key: torch.as_tensor(value) for key, value in next(iter(loader(manager, indices=indices))).items()}
        torch.manual_seed(3)
        module.zero_grad()
        _, _, loss_output = module(batch)
        loss_output.loss.backward()
        losses.append(loss_output.loss.detach())
        gradients.append([p.grad.clone() for p in module.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for reference, fast in zip(*gradients, strict=True):
        torch.testing.assert_close(reference, fast, rtol=0, atol=0)


def test_training_gives_the_same_model_on_either_path(cite_path, monkeypatch):
    latents = []
    for data_loader in (AnnDataLoader, staticmethod(make_data_loader)):
        monkeypatch.setattr(spvi.SPVI, "_data_loader_cls", data_loader)
        monkeypatch.setattr(spvi._dataloader.SPVIDataSplitter, "data_loader_cls", data_loader)
        mdata = md.read_h5mu(cite_path)
        spvi.SPVI.setup_mudata(mdata, likelihoods={"rna": "nb", "protein": "nbmixture"}, batch_key="batch")
        scvi.settings.seed = 0
        model = spvi.SPVI(mdata, n_shared=4, n_private=2)
        model.train(max_epochs=2, batch_size=256, enable_progress_bar=False, enable_checkpointing=False)
        latents.append(model.get_latent_representation(kind="all"))
    np.testing.assert_array_equal(latents[0], latents[1])


def test_sparse_minibatches_keep_the_annloader(cite_model):
    assert type(make_data_loader(cite_model.adata_manager, load_sparse_tensor=True)) is AnnDataLoader


def test_backed_data_keep_the_annloader(cll_path, tmp_path):
    mdata = md.read_h5mu(cll_path)
    keep = mdata.obs_names[mdata.obs["has_rna"].astype(bool) & mdata.obs["has_meth"].astype(bool)]
    path = tmp_path / "cll.h5mu"
    md.MuData({"rna": mdata["rna"][keep].copy(), "meth": mdata["meth"][keep].copy()}).write(path)
    backed = md.read_h5mu(path, backed=True)
    spvi.SPVI.setup_mudata(backed, likelihoods={"rna": "gaussian", "meth": "gaussian"})
    model = spvi.SPVI(backed, n_shared=2, n_private=1)
    assert type(make_data_loader(model.adata_manager, batch_size=16)) is AnnDataLoader
