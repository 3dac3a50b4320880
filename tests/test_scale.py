"""Scale: the batched objective equals the naive one, on-disk (backed) data, block-wise checks."""

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from scvi import REGISTRY_KEYS
from torch.distributions import Normal, kl_divergence

import spvi
from spvi import _data
from spvi._constants import PRESENCE_KEY, data_key
from spvi._module import SPVAE

N_OBS = 24


def _three_modality_module(objective: str, shared_kl_weight: float = 1.0) -> tuple[SPVAE, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    likelihoods = ["gaussian", "nb", "bernoulli"]
    module = SPVAE(
        n_input=[5, 6, 7],
        likelihoods=likelihoods,
        modalities=["g", "c", "b"],
        n_shared=3,
        n_private=[2, 3, 1],
        objective=objective,
        n_hidden=8,
        n_batch=2,
        shared_kl_weight=shared_kl_weight,
    )
    generator = torch.Generator().manual_seed(1)
    gaussian = torch.randn(N_OBS, 5, generator=generator)
    gaussian[0, 1] = float("nan")
    presence = torch.ones(N_OBS, 3)
    presence[:6, 2] = 0  # some cells lack the third modality, some the second
    presence[6:9, 1] = 0
    tensors = {
        data_key("g"): gaussian,
        data_key("c"): torch.poisson(torch.full((N_OBS, 6), 4.0), generator=generator),
        data_key("b"): torch.bernoulli(torch.full((N_OBS, 7), 0.3), generator=generator),
        PRESENCE_KEY: presence,
        REGISTRY_KEYS.BATCH_KEY: torch.randint(0, 2, (N_OBS, 1), generator=generator).float(),
    }
    return module, tensors


def _prior_kl(q: Normal) -> torch.Tensor:
    """KL(q || N(0, I)) summed over the latent dimensions, by torch.distributions."""
    return kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))).sum(-1)


def _naive_loss(module: SPVAE, tensors: dict[str, torch.Tensor], kl_weight: float) -> torch.Tensor:
    """The objective written term by term and target by target: one decoder call per (term, target)."""
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    qz_shared, qz_private = inference_outputs["qz_shared"], inference_outputs["qz_private"]
    presence = inference_outputs["presence"]
    categorical = module._categorical(tensors)
    z_private = [q.rsample() for q in qz_private]  # same draw order as SPVAE.generative
    kl_private = torch.stack([_prior_kl(q) for q in qz_private], dim=1)
    term_losses, valid = [], []
    for term in module.objective.terms:
        experts = module._term_experts(term, presence)
        posterior = module._term_posterior(term, qz_shared, experts)
        z_shared = posterior.rsample()
        term_loss = module.shared_kl_weight * _prior_kl(posterior) + (kl_private * experts).sum(dim=1)
        term_loss = kl_weight * term_loss
        targets = range(module.n_modalities) if term.targets is None else term.targets
        for m in targets:
            own = experts[:, m : m + 1]
            shared = z_shared.detach() if term.stop_gradient and term.experts == (m,) else z_shared
            private = torch.where(own, z_private[m], torch.zeros_like(z_private[m]))
            x = tensors[data_key(module.modalities[m])]
            library = module.cell_library(m, x, presence[:, m : m + 1])
            params = module.decoders[m](torch.cat([shared, private], dim=1), library, ~own, *categorical)
            neg_log_lik = -module.decoders[m].likelihood.log_prob(x, params).sum(dim=1)
            term_loss = term_loss + torch.where(presence[:, m], neg_log_lik, torch.zeros_like(neg_log_lik))
        term_losses.append(term_loss)
        valid.append(module._term_is_valid(term, presence))
    term_losses, valid = torch.stack(term_losses, dim=1), torch.stack(valid, dim=1).float()
    weights = valid / valid.sum(dim=1, keepdim=True).clamp(min=1) if module.objective.mixture else valid
    return (weights * term_losses).sum(dim=1).mean() + module.alignment_weight * _naive_alignment(qz_shared, presence)


def _naive_alignment(qz_shared, presence: torch.Tensor) -> torch.Tensor:
    """Jeffreys divergence of the experts' z_shared posteriors in closed form, per observed pair, mean over cells."""

    def kl(q1, q2):
        return (torch.log(q2.scale / q1.scale) + (q1.scale**2 + (q1.loc - q2.loc) ** 2) / (2 * q2.scale**2) - 0.5).sum(
            dim=1
        )

    penalty = torch.zeros(presence.shape[0])
    for j in range(len(qz_shared)):
        for k in range(j + 1, len(qz_shared)):
            both = (presence[:, j] & presence[:, k]).float()
            penalty = penalty + both * (kl(qz_shared[j], qz_shared[k]) + kl(qz_shared[k], qz_shared[j]))
    return penalty.mean()


@pytest.mark.parametrize("shared_kl_weight", [1.0, 0.2])
@pytest.mark.parametrize("objective", spvi.OBJECTIVES)
def test_batched_objective_equals_naive_loss_and_gradients(objective, shared_kl_weight):
    module, tensors = _three_modality_module(objective, shared_kl_weight)
    parameters = [p for p in module.parameters() if p.requires_grad]

    torch.manual_seed(5)
    *_, batched = module(tensors, loss_kwargs={"kl_weight": 0.3})
    batched_grads = torch.autograd.grad(batched.loss, parameters, allow_unused=True)

    torch.manual_seed(5)
    naive = _naive_loss(module, tensors, kl_weight=0.3)
    naive_grads = torch.autograd.grad(naive, parameters, allow_unused=True)

    torch.testing.assert_close(batched.loss, naive, rtol=1e-5, atol=1e-5)
    for parameter, batched_grad, naive_grad in zip(parameters, batched_grads, naive_grads, strict=True):
        if naive_grad is None:
            assert batched_grad is None or torch.count_nonzero(batched_grad) == 0
            continue
        assert batched_grad is not None, parameter.shape
        torch.testing.assert_close(batched_grad, naive_grad, rtol=1e-4, atol=1e-5)


def _write_simulated_mudata(path, n_obs: int = 240, csc: bool = False) -> md.MuData:
    """Sparse counts (rna) and dense values (prot) written to ``path``; returns the in-memory MuData."""
    rng = np.random.default_rng(0)
    counts = sp.random(n_obs, 40, density=0.3, format="csr", dtype=np.float32, random_state=1)
    counts.data = np.ceil(counts.data * 8)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_obs)])
    genes, proteins = [f"gene{j}" for j in range(40)], [f"protein{j}" for j in range(15)]
    mdata = md.MuData(
        {
            "rna": ad.AnnData(counts.tocsc() if csc else counts, obs=obs, var=pd.DataFrame(index=genes)),
            "prot": ad.AnnData(
                rng.normal(size=(n_obs, 15)).astype(np.float32), obs=obs, var=pd.DataFrame(index=proteins)
            ),
        }
    )
    mdata.write(path)
    return mdata


def _trained_latent(mdata: md.MuData) -> tuple[spvi.SPVI, np.ndarray]:
    spvi.SPVI.setup_mudata(mdata, likelihoods={"rna": "nb", "prot": "gaussian"})
    scvi.settings.seed = 3
    model = spvi.SPVI(mdata, n_shared=2, n_private=2, n_hidden=16)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    return model, model.get_latent_representation(kind="all")


def test_backed_mudata_trains_from_disk_like_in_memory(tmp_path):
    in_memory = _write_simulated_mudata(tmp_path / "data.h5mu")
    backed = md.read_h5mu(tmp_path / "data.h5mu", backed=True)

    backed_model, backed_latent = _trained_latent(backed)
    _, memory_latent = _trained_latent(in_memory)

    # the registered data are the on-disk arrays themselves, not copies in memory
    assert all(_data.is_on_disk(backed_model.adata.mod[m].X) for m in ("rna", "prot"))
    np.testing.assert_allclose(backed_latent, memory_latent, rtol=1e-5, atol=1e-6)
    prediction = backed_model.predict(source="rna", target="prot", return_numpy=True)
    assert prediction.shape == (240, 15)
    assert np.isfinite(prediction).all()


def test_backed_modality_with_missing_cells_is_loaded_with_a_warning(tmp_path):
    full = _write_simulated_mudata(tmp_path / "full.h5mu")
    partial = md.MuData({"rna": full.mod["rna"], "prot": full.mod["prot"][:200].copy()})
    partial.write(tmp_path / "partial.h5mu")
    backed = md.read_h5mu(tmp_path / "partial.h5mu", backed=True)
    with pytest.warns(UserWarning, match="'prot' is on disk and lacks some cells"):
        spvi.SPVI.setup_mudata(backed, likelihoods={"prot": "gaussian"})
    model = spvi.SPVI(backed, n_shared=2, n_private=2)
    assert _data.is_on_disk(model.adata.mod["rna"].X)
    assert not _data.is_on_disk(model.adata.mod["prot"].X)
    np.testing.assert_array_equal(model.adata.mod["prot"].X[:200], full.mod["prot"].X[:200])
    assert not model.adata.mod["prot"].X[200:].any()


def test_backed_csc_matrix_is_rejected(tmp_path):
    _write_simulated_mudata(tmp_path / "csc.h5mu", csc=True)
    backed = md.read_h5mu(tmp_path / "csc.h5mu", backed=True)
    with pytest.raises(ValueError, match="on-disk CSC matrix"):
        spvi.SPVI.setup_mudata(backed)


def test_sorted_rows_dataset_reads_unsorted_and_repeated_rows(tmp_path):
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    with h5py.File(tmp_path / "x.h5", "w") as file:
        file["x"] = values
    with h5py.File(tmp_path / "x.h5", "r") as file:
        dataset = _data.SortedRowsDataset(file["x"])
        rows = np.array([7, 2, 7, 0])
        np.testing.assert_array_equal(dataset[rows], values[rows])
        np.testing.assert_array_equal(dataset[list(rows)], values[rows])
        np.testing.assert_array_equal(dataset[2:5], values[2:5])


@pytest.mark.parametrize("sparse", [False, True])
def test_checks_read_in_blocks_find_problems_in_any_block(monkeypatch, sparse):
    monkeypatch.setattr(_data, "BLOCK_ENTRIES", 30)  # 3 rows of 10 features per block
    values = np.random.default_rng(0).poisson(3.0, size=(11, 10)).astype(np.float32)
    values[:, 4] = 2.0  # constant over all blocks
    convert = sp.csr_matrix if sparse else np.asarray
    assert len(list(_data.row_blocks(values))) == 4
    names = pd.Index([f"gene{j}" for j in range(10)])
    with pytest.warns(UserWarning, match=r"1 constant features \(zero variance\), e.g. \['gene4'\]"):
        assert _data.check_matrix(convert(values), "rna", None, None, names) == "nb"
    values[10, 7] = 0.5  # non-integer in the last block only
    with pytest.warns(UserWarning, match="constant"):
        assert _data.check_matrix(convert(values), "rna", None, None, names) == "gaussian"
    with pytest.raises(ValueError, match="non-integer"):
        _data.check_matrix(convert(values), "rna", None, "nb")
    values[9, 1] = np.inf
    with pytest.raises(ValueError, match="inf"):
        _data.check_matrix(convert(values), "rna", None, None)
    np.testing.assert_allclose(_data.row_sums(convert(values[:9])), values[:9].sum(axis=1))
