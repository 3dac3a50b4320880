"""The maths of the module: stop-gradient, the four objectives' terms, masking of missing modalities."""

import mudata as md
import pytest
import torch
from scvi import REGISTRY_KEYS
from torch.distributions import Normal

from spvi._constants import PRESENCE_KEY, data_key
from spvi._likelihoods import LIKELIHOODS
from spvi._module import SPVAE, _rsample, product_of_experts
from spvi._objectives import make_objective

MODALITIES = ["a", "b"]
N_OBS = 32


def _module(objective: str, likelihoods=("gaussian", "nb"), n_modalities: int = 2, **kwargs) -> SPVAE:
    torch.manual_seed(0)
    names = [f"m{i}" for i in range(n_modalities)]
    return SPVAE(
        n_input=[7] * n_modalities,
        likelihoods=list(likelihoods)[:n_modalities] + ["gaussian"] * (n_modalities - len(likelihoods)),
        modalities=names,
        n_shared=3,
        n_private=[2] * n_modalities,
        objective=objective,
        n_hidden=16,
        **kwargs,
    )


def _tensors(module: SPVAE, presence: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for name, decoder in zip(module.modalities, module.decoders, strict=True):
        if decoder.likelihood.is_count:
            tensors[data_key(name)] = torch.poisson(torch.full((N_OBS, 7), 3.0), generator=generator)
        else:
            tensors[data_key(name)] = torch.randn(N_OBS, 7, generator=generator)
    tensors[PRESENCE_KEY] = torch.ones(N_OBS, module.n_modalities) if presence is None else presence
    tensors[REGISTRY_KEYS.BATCH_KEY] = torch.zeros(N_OBS, 1)
    tensors[REGISTRY_KEYS.LABELS_KEY] = torch.zeros(N_OBS, 1)
    return tensors


def _reconstruction(module: SPVAE, tensors):
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    generative_outputs = module.generative(**module._get_generative_input(tensors, inference_outputs))
    presence = inference_outputs["presence"]
    return module.reconstruction_per_term(tensors, presence, generative_outputs), generative_outputs


def _shared_head_grad(module: SPVAE, loss: torch.Tensor, expert: int) -> torch.Tensor:
    weight = module.encoders[expert].shared_head.linear.weight
    (grad,) = torch.autograd.grad(loss, weight, retain_graph=True, allow_unused=True)
    return torch.zeros_like(weight) if grad is None else grad


def test_stop_gradient_mmvae_plus_plus():
    module = _module("mmvae++")
    reconstruction, _ = _reconstruction(module, _tensors(module))
    # term j = expert j; reconstruction[m][:, j] decodes modality m from expert j
    for j in range(2):
        same = reconstruction[j][:, j].sum()
        cross = reconstruction[1 - j][:, j].sum()
        assert torch.count_nonzero(_shared_head_grad(module, same, j)) == 0
        assert _shared_head_grad(module, cross, j).abs().sum() > 0
        # the private head of the expert still learns from its own modality
        private_weight = module.encoders[j].private_head.linear.weight
        (private_grad,) = torch.autograd.grad(same, private_weight, retain_graph=True)
        assert private_grad.abs().sum() > 0


def test_mmvae_without_stop_gradient_passes_same_modality_gradient():
    module = _module("mmvae")
    reconstruction, _ = _reconstruction(module, _tensors(module))
    same = reconstruction[0][:, 0].sum()
    assert _shared_head_grad(module, same, 0).abs().sum() > 0


def test_same_modality_term_uses_value_of_shared_sample():
    """The detached z_shared still changes the same-modality reconstruction (value used, gradient cut)."""
    module = _module("mmvae++")
    tensors = _tensors(module)
    reconstruction, _ = _reconstruction(module, tensors)
    with torch.no_grad():
        module.encoders[0].shared_head.linear.bias[:3] += 5.0
    shifted, _ = _reconstruction(module, tensors)
    assert not torch.allclose(reconstruction[0][:, 0], shifted[0][:, 0])


def test_cross_modal_terms_decode_with_private_block_at_zero():
    module = _module("mmvae++")
    tensors = _tensors(module)
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    generative_inputs = module._get_generative_input(tensors, inference_outputs)
    captured = []
    hook = module.decoders[1].trunk.register_forward_hook(lambda mod, args, out: captured.append(args[0]))
    module.generative(**generative_inputs)
    hook.remove()
    stacked = captured[0].view(2, N_OBS, -1)  # terms (expert 0, expert 1) decoding modality 1
    assert torch.all(stacked[0, :, 3:] == 0)  # cross-modal: private block of modality 1 at 0
    assert torch.all(stacked[1, :, 3:] != 0)  # same-modality: sampled private block


def test_cross_modal_private_posterior_uses_the_targets_own_sample_without_its_gradient():
    module = _module("mmvae++", cross_modal_private="posterior")
    tensors = _tensors(module)
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    captured = []
    hook = module.decoders[1].trunk.register_forward_hook(lambda mod, args, out: captured.append(args[0]))
    generative_outputs = module.generative(**module._get_generative_input(tensors, inference_outputs))
    hook.remove()
    stacked = captured[0].view(2, N_OBS, -1)  # terms (expert 0, expert 1) decoding modality 1
    # the cross-modal term decodes with the same private sample as the same-modality term
    torch.testing.assert_close(stacked[0, :, 3:], stacked[1, :, 3:])
    assert torch.all(stacked[0, :, 3:] != 0)
    reconstruction = module.reconstruction_per_term(tensors, inference_outputs["presence"], generative_outputs)
    private_weight = module.encoders[1].private_head.linear.weight
    cross = reconstruction[1][:, 0].sum()  # modality 1 decoded from expert 0
    (grad,) = torch.autograd.grad(cross, private_weight, retain_graph=True, allow_unused=True)
    assert grad is None or torch.all(grad == 0)  # the target's private encoder learns from its own term only
    (grad_self,) = torch.autograd.grad(reconstruction[1][:, 1].sum(), private_weight, retain_graph=True)
    assert grad_self.abs().sum() > 0
    # the source's shared encoder still learns from the cross-modal term
    assert _shared_head_grad(module, cross, expert=0).abs().sum() > 0
    with pytest.raises(ValueError, match="cross_modal_private must be one of"):
        _module("mmvae++", cross_modal_private="prior")


@pytest.mark.parametrize(
    ("objective", "n_terms", "mixture"),
    [("mmvae++", 3, True), ("mmvae", 3, True), ("mopoe", 7, True), ("mvae", 4, False)],
)
def test_objective_terms(objective, n_terms, mixture):
    spec = make_objective(objective, 3)
    assert len(spec.terms) == n_terms
    assert spec.mixture is mixture
    has_cross_modal = any(t.targets is None and t.experts is not None and len(t.experts) < 3 for t in spec.terms)
    assert has_cross_modal is (objective != "mvae")


def test_mvae_has_no_cross_modal_terms():
    module = _module("mvae")
    reconstruction, generative_outputs = _reconstruction(module, _tensors(module))
    # term 0: joint (decodes both); term 1: only modality 0; term 2: only modality 1
    assert generative_outputs["stacked_terms"] == [[0, 1], [0, 2]]
    assert torch.all(reconstruction[1][:, 1] == 0)
    assert torch.all(reconstruction[0][:, 2] == 0)


def test_rsample_draws_what_normal_rsample_draws_with_its_gradients():
    loc, scale = torch.randn(6, 3, requires_grad=True), (torch.rand(6, 3) + 0.1).requires_grad_()
    torch.manual_seed(3)
    expected = Normal(loc, scale).rsample()
    torch.manual_seed(3)
    sample = _rsample(Normal(loc, scale))
    torch.testing.assert_close(sample, expected, rtol=1e-6, atol=1e-7)  # the same noise; addcmul rounds once
    weights = torch.randn(6, 3)
    gradients = torch.autograd.grad((sample * weights).sum(), (loc, scale))
    expected_gradients = torch.autograd.grad((expected * weights).sum(), (loc, scale))
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient)


def test_product_of_experts_matches_closed_form():
    q1 = torch.distributions.Normal(torch.tensor([[1.0]]), torch.tensor([[0.5]]))
    q2 = torch.distributions.Normal(torch.tensor([[-2.0]]), torch.tensor([[1.0]]))
    product = product_of_experts([q1, q2], torch.ones(1, 2))
    precision = 1 + 1 / 0.25 + 1
    assert product.loc.item() == pytest.approx((1.0 / 0.25 - 2.0) / precision)
    assert product.scale.item() == pytest.approx(precision**-0.5)
    # an absent expert drops out of the product
    only_first = product_of_experts([q1, q2], torch.tensor([[1.0, 0.0]]))
    assert only_first.loc.item() == pytest.approx((1.0 / 0.25) / (1 + 4))


@pytest.mark.parametrize("objective", ["mmvae++", "mopoe", "mvae"])
def test_shared_kl_weight_scales_only_the_shared_kl_of_the_training_loss(objective):
    module = _module(objective)
    presence = torch.ones(N_OBS, 2)
    presence[:5, 1] = 0
    tensors = _tensors(module, presence)
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    generative_outputs = module.generative(**module._get_generative_input(tensors, inference_outputs))
    default = module.loss(tensors, inference_outputs, generative_outputs, kl_weight=0.5)
    # the default is the loss of the whole KL at the KL weight, bit for bit
    reconstruction = module.reconstruction_per_term(tensors, inference_outputs["presence"], generative_outputs)
    kl_shared, kl_private = generative_outputs["kl_shared"], generative_outputs["kl_private"]
    valid = generative_outputs["valid"].float()
    weights = valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0) if module.objective.mixture else valid
    elbo_loss = (weights * (sum(reconstruction) + 0.5 * (kl_shared + kl_private))).sum(dim=1).mean()
    alignment = module.alignment_penalty(inference_outputs["qz_shared"], inference_outputs["presence"]).mean()
    assert torch.equal(default.loss, elbo_loss + module.alignment_weight * alignment)
    # a weight of 0.25 takes 0.75 of the weighted shared KL off the loss and leaves the reported KL alone
    module.shared_kl_weight = 0.25
    weighted = module.loss(tensors, inference_outputs, generative_outputs, kl_weight=0.5)
    shared_part = (weights * kl_shared).sum(dim=1).mean()
    assert shared_part > 0.01
    torch.testing.assert_close(weighted.loss, default.loss - 0.5 * 0.75 * shared_part)
    assert torch.equal(weighted.kl_local["kl"], default.kl_local["kl"])
    with pytest.raises(ValueError, match="shared_kl_weight must be >= 0, got -1"):
        _module(objective, shared_kl_weight=-1.0)


@pytest.mark.parametrize("objective", ["mmvae++", "mmvae", "mopoe", "mvae"])
def test_missing_modality_contributes_nothing(objective):
    """A cell without modality 1 gets the same loss whatever zeros/garbage stand in its padded row."""
    module = _module(objective)
    presence = torch.ones(N_OBS, 2)
    presence[: N_OBS // 2, 1] = 0
    tensors = _tensors(module, presence)
    torch.manual_seed(5)
    loss_a = module(tensors, compute_loss=True)[2].loss
    tensors[data_key("m1")][: N_OBS // 2] = 1000.0
    torch.manual_seed(5)
    loss_b = module(tensors, compute_loss=True)[2].loss
    assert torch.isfinite(loss_a)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)


def test_gaussian_nan_entries_are_masked():
    module = _module("mmvae++", likelihoods=("gaussian", "gaussian"))
    tensors = _tensors(module)
    tensors[data_key("m0")][0, :3] = float("nan")
    torch.manual_seed(3)
    loss = module(tensors, compute_loss=True)[2].loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_cross_modal_rows_use_the_marginal_dispersion():
    module = _module("mmvae++", likelihoods=("gaussian", "nb"))
    tensors = _tensors(module)
    _, generative_outputs = _reconstruction(module, tensors)
    with torch.no_grad():
        module.decoders[0].likelihood.raw_scale_marginal.fill_(2.0)
    _, shifted = _reconstruction(module, tensors)
    # modality 0 is decoded by term 0 (its own expert: conditional sd) and term 1 (cross-modal: marginal sd)
    own, cross = generative_outputs["params"][0]["scale"].view(2, N_OBS, -1)
    own_shifted, cross_shifted = shifted["params"][0]["scale"].view(2, N_OBS, -1)
    torch.testing.assert_close(own, own_shifted)
    assert torch.all(cross_shifted > cross)
    assert module.decoders[1].likelihood.log_theta_marginal is not None

    paper = _module("mmvae++", likelihoods=("gaussian", "nb"), marginal_dispersion=False)
    assert paper.decoders[0].likelihood.raw_scale_marginal is None
    _, outputs = _reconstruction(paper, _tensors(paper))
    own, cross = outputs["params"][0]["scale"].view(2, N_OBS, -1)
    torch.testing.assert_close(own, cross)


@pytest.mark.parametrize("objective", ["mmvae++", "mmvae", "mopoe", "mvae"])
@pytest.mark.parametrize("cross_modal_private", ["zero", "posterior"])
def test_every_parameter_is_trained(objective, cross_modal_private):
    # a parameter that prediction or cross_modal_nll uses but no training term reaches stays at its random
    # initial value: e.g. a marginal dispersion with cross_modal_private="posterior" or with MVAE
    module = _module(objective, likelihoods=("gaussian", "nb"), cross_modal_private=cross_modal_private)
    torch.manual_seed(3)
    module(_tensors(module), compute_loss=True)[2].loss.backward()
    untrained = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert untrained == []
    has_marginal = module.decoders[0].likelihood.raw_scale_marginal is not None
    assert has_marginal == (cross_modal_private == "zero" and objective != "mvae")


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_summed_log_likelihood_equals_the_element_wise_one(likelihood, cite_path):
    # the training loss sums each count likelihood over the non-zero entries only where terms vanish at zero:
    # same value and gradients as the element-wise log-likelihood, on real sparse counts (~90% zeros)
    rna = md.read_h5mu(cite_path)["rna"]
    x = torch.as_tensor(rna.X[:64, :300].toarray(), dtype=torch.float32)
    if likelihood == "gaussian":
        x = torch.log1p(x).masked_fill(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.1, torch.nan)
    assert (x == 0).float().mean() > 0.5
    torch.manual_seed(0)
    head = LIKELIHOODS[likelihood](16, x.shape[1])
    hidden = torch.randn(2 * x.shape[0], 16)
    marginal = (torch.arange(2 * x.shape[0]) >= x.shape[0]).unsqueeze(1)  # first term conditional, second marginal
    library = torch.nan_to_num(x).sum(1, keepdim=True).clamp(min=1.0).repeat(2, 1)
    values, gradients = [], []
    for summed in (False, True):
        head.zero_grad()
        params = {key: value.view(2, x.shape[0], -1) for key, value in head(hidden, library, marginal).items()}
        log_lik = head.log_likelihood(x, params) if summed else head.log_prob(x, params).sum(-1)
        log_lik.sum().backward()
        values.append(log_lik.detach())
        gradients.append({name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None})
    assert values[0].shape == (2, x.shape[0])
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-3)
    assert gradients[0]
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-4, msg=name)
