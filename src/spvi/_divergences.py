"""Divergences between the diagonal Gaussian posteriors of the latent, with hand-written gradients.

Every training step evaluates the KL of each encoder's posterior to the prior and, with an alignment
weight, the Jeffreys divergence between the experts' shared posteriors, on small ``(cells, latent)``
blocks. Written with autograd each is 8 to 22 operators forward plus about as many backward, and on a
CPU a small operator costs microseconds of dispatch and graph bookkeeping whatever its size. As autograd
functions each is one graph node with a closed-form backward pass: two KLs and a Jeffreys divergence of
``(128, 10)`` posteriors, forward and backward, took 0.46 instead of 0.60 ms on one CPU thread.

``tests/test_divergences.py`` checks values and gradients against ``torch.distributions.kl_divergence``
and finite differences in float64.
"""

from __future__ import annotations

import torch


class _StandardNormalKL(torch.autograd.Function):
    """``KL(N(loc, scale^2) || N(0, 1))`` summed over the last axis."""

    @staticmethod
    def forward(ctx, loc, scale):
        ctx.save_for_backward(loc, scale)
        return (0.5 * (scale.pow(2) + loc.pow(2) - 1.0) - torch.log(scale)).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        loc, scale = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        # d/d loc: loc; d/d scale: scale - 1 / scale
        return grad * loc, grad * (scale - scale.reciprocal())


class _JeffreysDivergence(torch.autograd.Function):
    """``KL(p || q) + KL(q || p)`` of two diagonal Gaussians, summed over the last axis.

    With variances ``a``, ``b`` and mean difference ``d`` the logarithms cancel:
    ``(a / b + b / a) / 2 - 1 + d^2 (1 / a + 1 / b) / 2`` per dimension.
    """

    @staticmethod
    def forward(ctx, loc_p, scale_p, loc_q, scale_q):
        inverse_var_p, inverse_var_q = scale_p.pow(-2), scale_q.pow(-2)
        difference = loc_p - loc_q
        inverse_sum = inverse_var_p + inverse_var_q
        divergence = 0.5 * (
            scale_p.pow(2) * inverse_var_q + scale_q.pow(2) * inverse_var_p + difference.pow(2) * inverse_sum
        )
        ctx.save_for_backward(scale_p, scale_q, inverse_var_p, inverse_var_q, difference, inverse_sum)
        return (divergence - 1.0).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        scale_p, scale_q, inverse_var_p, inverse_var_q, difference, inverse_sum = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_loc_p = grad * difference * inverse_sum
        squared_difference = difference.pow(2)
        # d/d scale_p: scale_p / b - (b + d^2) / scale_p^3, and symmetrically for q
        grad_scale_p = scale_p * (inverse_var_q - (scale_q.pow(2) + squared_difference) * inverse_var_p.pow(2))
        grad_scale_q = scale_q * (inverse_var_p - (scale_p.pow(2) + squared_difference) * inverse_var_q.pow(2))
        return grad_loc_p, grad * grad_scale_p, -grad_loc_p, grad * grad_scale_q


def standard_normal_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, scale^2) || N(0, I))`` summed over the last axis: ``(scale^2 + loc^2 - 1) / 2 - log(scale)``."""
    return _StandardNormalKL.apply(loc, scale)


def jeffreys_divergence(
    loc_p: torch.Tensor, scale_p: torch.Tensor, loc_q: torch.Tensor, scale_q: torch.Tensor
) -> torch.Tensor:
    """``KL(p || q) + KL(q || p)`` of diagonal Gaussians ``p = N(loc_p, scale_p^2)``, ``q``, summed over the last axis."""
    return _JeffreysDivergence.apply(loc_p, scale_p, loc_q, scale_q)
