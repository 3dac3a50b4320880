"""The hand-written gradients of the latent divergences (spvi._divergences)."""

import torch
from torch.distributions import Normal, kl_divergence

from spvi._divergences import jeffreys_divergence, standard_normal_kl


def _gaussians(seed: int, n: int = 2) -> list[torch.Tensor]:
    """``n`` (loc, scale) pairs of shape (4, 3, 5) in float64, scales in (0.05, 3)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for _ in range(n):
        tensors.append(torch.randn(4, 3, 5, dtype=torch.float64, generator=generator) * 2)
        tensors.append(torch.rand(4, 3, 5, dtype=torch.float64, generator=generator) * 2.95 + 0.05)
    return [t.requires_grad_() for t in tensors]


def test_standard_normal_kl_equals_torch_and_its_gradients():
    loc, scale = _gaussians(0, n=1)
    kl = standard_normal_kl(loc, scale)
    expected = kl_divergence(Normal(loc, scale), Normal(torch.zeros_like(loc), torch.ones_like(scale))).sum(-1)
    assert kl.shape == (4, 3)
    torch.testing.assert_close(kl, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(4, 3, dtype=torch.float64)
    gradients = torch.autograd.grad((kl * weights).sum(), (loc, scale))
    expected_gradients = torch.autograd.grad((expected * weights).sum(), (loc, scale))
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(standard_normal_kl, (loc[0, :2], scale[0, :2]))


def test_jeffreys_divergence_equals_both_kls_and_its_gradients():
    loc_p, scale_p, loc_q, scale_q = _gaussians(1)
    p, q = Normal(loc_p, scale_p), Normal(loc_q, scale_q)
    jeffreys = jeffreys_divergence(loc_p, scale_p, loc_q, scale_q)
    expected = (kl_divergence(p, q) + kl_divergence(q, p)).sum(-1)
    assert jeffreys.shape == (4, 3)
    assert (jeffreys > 0).all()
    torch.testing.assert_close(jeffreys, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        jeffreys_divergence(loc_p, scale_p, loc_p, scale_p), torch.zeros(4, 3, dtype=torch.float64)
    )
    inputs = (loc_p, scale_p, loc_q, scale_q)
    weights = torch.randn(4, 3, dtype=torch.float64)
    gradients = torch.autograd.grad((jeffreys * weights).sum(), inputs)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), inputs)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradcheck(jeffreys_divergence, tuple(t[0, :2] for t in inputs))


def test_divergences_accept_float32_gradients_of_a_detached_input():
    """Only the inputs that need a gradient get one (a detached scale, as for a stop-gradient), float32 kept."""
    loc, scale = torch.randn(6, 2, requires_grad=True), torch.rand(6, 2) + 0.5
    (gradient,) = torch.autograd.grad(jeffreys_divergence(loc, scale, torch.zeros(6, 2), scale).sum(), (loc,))
    assert gradient.dtype == torch.float32
    torch.testing.assert_close(gradient, 2 * loc.detach() / scale.pow(2))
