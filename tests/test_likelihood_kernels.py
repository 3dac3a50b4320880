"""The hand-written gradients of the summed count log-likelihoods (spvi._likelihood_kernels)."""

import pytest
import torch
from scvi.distributions import NegativeBinomial
from torch.distributions import Bernoulli

from spvi._likelihood_kernels import _digamma_increment, bernoulli_with_depth, softmax_negative_binomial

N_OBS, N_FEATURES, N_BLOCKS = 5, 7, 3


def _counts(seed: int = 0) -> torch.Tensor:
    """Counts with zeros, ones and larger values (the three cases of the kernels), float64."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full((N_OBS, N_FEATURES), 1.5, dtype=torch.float64), generator=generator)
    counts[0, :3] = torch.tensor([0.0, 1.0, 40.0])
    counts[1, :2] = torch.tensor([0.5, 2.5])  # the kernels hold for any count >= 0 (spvi's data are integers)
    return counts


def _nb_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(N_BLOCKS, N_OBS, N_FEATURES, dtype=torch.float64, generator=generator)
    log_library = torch.rand(N_BLOCKS, N_OBS, 1, dtype=torch.float64, generator=generator) * 3
    theta_groups = torch.rand(2, N_FEATURES, dtype=torch.float64, generator=generator) * 5 + 0.1
    group = torch.randint(0, 2, (N_BLOCKS, N_OBS, 1), generator=generator)
    return logits.requires_grad_(), log_library.requires_grad_(), theta_groups.requires_grad_(), group


def test_negative_binomial_equals_the_autograd_likelihood():
    x = _counts()
    logits, log_library, theta_groups, group = _nb_inputs()
    log_lik = softmax_negative_binomial(logits, log_library, theta_groups, group, x)
    mu = torch.exp(torch.log_softmax(logits, dim=-1) + log_library)
    theta = torch.where(group.bool(), theta_groups[1], theta_groups[0])
    expected = NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum(-1)  # with eps = 1e-8 inside its logarithms
    assert log_lik.shape == (N_BLOCKS, N_OBS)
    torch.testing.assert_close(log_lik, expected, rtol=1e-6, atol=1e-5)
    inputs = (logits, log_library, theta_groups)
    gradients = torch.autograd.grad(log_lik.sum(), inputs)
    for gradient, expected_gradient in zip(gradients, torch.autograd.grad(expected.sum(), inputs), strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-6, atol=1e-5)


def _check_directional_derivatives(function, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> None:
    """The backward pass against central finite differences (float64), along each input and along all at once.

    One random output weighting ``v`` and directions ``u`` give ``v^T J u`` from the gradients and from
    ``v^T (f(x + eps u) - f(x - eps u)) / (2 eps)`` (a check of every gradient entry, as torch's gradcheck
    does, would take a backward pass per output).
    """
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(function(*inputs).shape, dtype=torch.float64, generator=generator)
    gradients = torch.autograd.grad((function(*inputs) * weights).sum(), inputs)
    directions = [torch.randn(i.shape, dtype=torch.float64, generator=generator) for i in inputs]
    eps = 1e-6
    for perturbed in [*([k] for k in range(len(inputs))), list(range(len(inputs)))]:
        step = [d * eps if k in perturbed else torch.zeros_like(d) for k, d in enumerate(directions)]
        with torch.no_grad():
            plus = function(*(i + s for i, s in zip(inputs, step, strict=True)))
            minus = function(*(i - s for i, s in zip(inputs, step, strict=True)))
        numerical = ((plus - minus) * weights).sum() / (2 * eps)
        analytical = sum((gradients[k] * directions[k]).sum() for k in perturbed)
        torch.testing.assert_close(analytical, numerical, rtol=1e-6, atol=1e-6)


def test_negative_binomial_gradients_match_finite_differences():
    x = _counts(1)
    logits, log_library, theta_groups, group = _nb_inputs(1)
    _check_directional_derivatives(
        lambda *inputs: softmax_negative_binomial(*inputs, group, x), (logits, log_library, theta_groups)
    )


def _bernoulli_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(N_BLOCKS, N_OBS, N_FEATURES, dtype=torch.float64, generator=generator)
    log_depth = -torch.rand(N_BLOCKS, N_OBS, 1, dtype=torch.float64, generator=generator)
    log_region = -torch.rand(N_FEATURES, dtype=torch.float64, generator=generator)
    return logits.requires_grad_(), log_depth.requires_grad_(), log_region.requires_grad_()


def test_bernoulli_equals_the_autograd_likelihood():
    x = _counts()
    logits, log_depth, log_region = _bernoulli_inputs()
    log_lik = bernoulli_with_depth(logits, log_depth, log_region, x)
    probs = torch.sigmoid(logits) * torch.exp(log_depth) * torch.exp(log_region)
    expected = Bernoulli(probs=probs).log_prob((x > 0).to(probs.dtype)).sum(-1)
    assert log_lik.shape == (N_BLOCKS, N_OBS)
    torch.testing.assert_close(log_lik, expected)
    inputs = (logits, log_depth, log_region)
    gradients = torch.autograd.grad(log_lik.sum(), inputs)
    for gradient, expected_gradient in zip(gradients, torch.autograd.grad(expected.sum(), inputs), strict=True):
        torch.testing.assert_close(gradient, expected_gradient)


def test_bernoulli_gradients_match_finite_differences():
    x = _counts(2)
    _check_directional_derivatives(lambda *inputs: bernoulli_with_depth(*inputs, x), _bernoulli_inputs(2))


def test_backward_leaves_the_saved_tensors_intact():
    # retain_graph=True: a second backward pass through the same forward pass gives the same gradients
    inputs = _bernoulli_inputs()
    bernoulli = bernoulli_with_depth(*inputs, _counts()).sum()
    logits, log_library, theta_groups, group = _nb_inputs()
    nb = softmax_negative_binomial(logits, log_library, theta_groups, group, _counts()).sum()
    for log_lik, wrt in ((bernoulli, inputs), (nb, (logits, log_library, theta_groups))):
        first = torch.autograd.grad(log_lik, wrt, retain_graph=True)
        for again, gradient in zip(torch.autograd.grad(log_lik, wrt), first, strict=True):
            torch.testing.assert_close(again, gradient, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(N_OBS, N_FEATURES), (1, N_OBS, N_FEATURES), (2, 2, N_OBS, N_FEATURES)])
def test_leading_axes_are_blocks_of_rows_against_the_same_data(shape):
    x = _counts()
    logits = torch.randn(shape, dtype=torch.float64)
    log_depth = torch.full((*shape[:-1], 1), -0.5, dtype=torch.float64)
    log_lik = bernoulli_with_depth(logits, log_depth, torch.zeros(N_FEATURES, dtype=torch.float64), x)
    assert log_lik.shape == shape[:-1]
    rows = logits.reshape(-1, N_OBS, N_FEATURES)
    per_block = [
        bernoulli_with_depth(block, log_depth.reshape(-1, N_OBS, 1)[0], torch.zeros(N_FEATURES), x) for block in rows
    ]
    torch.testing.assert_close(log_lik.reshape(-1, N_OBS), torch.stack(per_block))


def test_digamma_increment_at_ones_and_other_counts():
    counts = torch.tensor([1.0, 1.0, 2.0, 7.0, 300.0, 0.5], dtype=torch.float64)
    theta_table = torch.tensor([0.01, 0.7, 3.0, 1e4], dtype=torch.float64)
    table_index = torch.tensor([0, 3, 1, 2, 0, 1])
    theta = theta_table[table_index]
    not_one = (counts != 1).nonzero().squeeze(1)
    increment = _digamma_increment(counts, theta, torch.digamma(theta_table), table_index, not_one)
    torch.testing.assert_close(increment, torch.digamma(counts + theta) - torch.digamma(theta))


def test_kernels_run_in_float32_under_bf16_autocast():
    # decoder outputs arrive in bf16 under mixed precision: the likelihoods are still summed in float32
    x = _counts().float()
    logits, log_library, theta_groups, group = (
        t.detach().float() if t.is_floating_point() else t for t in _nb_inputs()
    )
    reference = softmax_negative_binomial(logits, log_library, theta_groups, group, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_lik = softmax_negative_binomial(logits.bfloat16(), log_library, theta_groups, group, x)
        bernoulli = bernoulli_with_depth(logits.bfloat16(), -log_library, torch.zeros(N_FEATURES), x)
    assert log_lik.dtype == bernoulli.dtype == torch.float32
    torch.testing.assert_close(log_lik, reference, rtol=0.02, atol=0.5)
