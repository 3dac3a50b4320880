"""Summed count log-likelihoods with hand-written gradients, for the training loss.

The objectives evaluate each count modality under several latent samples per minibatch, on a dense
``(rows, features)`` block of parameters. Written with autograd, the negative binomial's summed
log-likelihood makes about 25 passes over that block (forward and backward, with the ``log_softmax``
of the rate and the per-row choice of dispersion), the Bernoulli's about 20; on CPU, where each pass is
memory-bound, these passes were most of a training step. The functions here compute the same value
and the same gradients in about half as many passes: the softmax is folded into the likelihood, the
per-feature dispersion is gathered per row group once, and the gradients are closed-form expressions
of quantities saved in the forward pass. The terms that vanish at ``x == 0`` are evaluated on the
non-zero entries only.

``tests/test_likelihood_kernels.py`` checks values and gradients against autograd through scvi-tools'
``NegativeBinomial`` and torch's ``Bernoulli`` and against finite differences in float64;
``tests/test_module.py`` against the element-wise likelihoods of :mod:`spvi._likelihoods`.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F


class Nonzeros:
    """The non-zero entries of a count matrix ``x`` ``(n, features)``, repeated for ``n_blocks`` stacked row blocks.

    Parameter rows are ``n_blocks`` blocks of ``n`` rows (one per latent sample or objective term), each
    block against the same ``x``. ``rows`` index the stacked rows, ``cols`` the features, ``flat`` the flattened
    ``(rows, features)`` parameters, ``counts`` are the values of ``x`` there, ``not_one`` the positions (in these
    entries) of the counts other than 1. ``nonzero_index``, the positions of the non-zero entries in ``x.view(-1)``
    (from the data loader), saves searching ``x`` for them. Each is computed for one block and offset per block.
    """

    def __init__(self, x: torch.Tensor, n_blocks: int, nonzero_index: torch.Tensor | None = None):
        n_obs, n_features = x.shape
        if nonzero_index is None:
            nonzero_index = x.reshape(-1).nonzero().squeeze(1)
        self._block_counts = x.reshape(-1).index_select(0, nonzero_index)
        rows = torch.div(nonzero_index, n_features, rounding_mode="floor")
        blocks = torch.arange(n_blocks, device=x.device).unsqueeze(1)
        self.flat = (blocks * (n_obs * n_features) + nonzero_index).reshape(-1)
        self.rows = (blocks * n_obs + rows).reshape(-1)
        self.counts = self._block_counts.repeat(n_blocks)
        self._blocks, self._n_features = blocks, n_features

    @functools.cached_property
    def cols(self) -> torch.Tensor:
        """Feature of each entry (only the NB kernel needs it)."""
        return self.flat - self.rows * self._n_features

    @functools.cached_property
    def not_one(self) -> torch.Tensor:
        """Positions of the entries whose count is not 1 (where no shortcut at ``x == 1`` applies)."""
        not_one = (self._block_counts != 1).nonzero().squeeze(1)
        return (self._blocks * self._block_counts.numel() + not_one).reshape(-1)


class _SoftmaxNegativeBinomial(torch.autograd.Function):
    """Per-row ``sum_j log NB(x_j; mu_j, theta_j)``, ``mu = exp(log_library) * softmax(logits)``.

    ``theta`` is one per-feature vector per row group (``theta_groups[group[r]]`` for row ``r``).
    """

    @staticmethod
    def forward(ctx, logits, log_library, theta_groups, group, nonzeros: Nonzeros):
        row_max = logits.amax(dim=1, keepdim=True)
        rate = torch.sub(logits, row_max).exp_()
        normaliser = rate.sum(dim=1, keepdim=True)
        log_normaliser = torch.log(normaliser) + row_max - log_library  # log mu = logits - log_normaliser
        library = torch.exp(log_library)
        rate.mul_(library / normaliser)
        theta_plus_rate = theta_groups.index_select(0, group).add_(rate)
        log_theta_plus_rate = torch.log(theta_plus_rate)
        # sum_j theta log theta - theta log(theta + mu): the first per group, the second one read of the block
        log_theta_groups = torch.log(theta_groups)
        theta_log_theta = (theta_groups * log_theta_groups).sum(dim=1)
        dense = (log_theta_plus_rate @ theta_groups.T).gather(1, group.unsqueeze(1)).squeeze(1)
        dense = theta_log_theta.index_select(0, group) - dense
        # where x > 0: x (log mu - log(theta + mu)) + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1), with
        # theta read from the per-group table; the lgamma terms are log(theta) at x == 1 and evaluated elsewhere
        rows, flat, counts = nonzeros.rows, nonzeros.flat, nonzeros.counts
        group_at = group.index_select(0, rows) * theta_groups.shape[1] + nonzeros.cols
        theta_at = theta_groups.reshape(-1).index_select(0, group_at)
        theta_plus_rate_at = theta_plus_rate.reshape(-1).index_select(0, flat)
        log_rate_at = logits.reshape(-1).index_select(0, flat) - log_normaliser.reshape(-1).index_select(0, rows)
        at_counts = counts * (log_rate_at - log_theta_plus_rate.reshape(-1).index_select(0, flat))
        log_gamma_ratio = log_theta_groups.reshape(-1).index_select(0, group_at)
        not_one = nonzeros.not_one
        counts_not_one = counts.index_select(0, not_one)
        log_gamma_ratio.index_copy_(
            0,
            not_one,
            torch.lgamma(counts_not_one + theta_at.index_select(0, not_one))
            - torch.lgamma(theta_groups).reshape(-1).index_select(0, group_at.index_select(0, not_one))
            - torch.lgamma(counts_not_one + 1),
        )
        ctx.save_for_backward(
            rate,
            library,
            theta_plus_rate,
            log_theta_plus_rate,
            theta_groups,
            group,
            group_at,
            theta_at,
            theta_plus_rate_at,
        )
        ctx.nonzeros, ctx.n_groups = nonzeros, theta_groups.shape[0]
        return dense.index_add(0, rows, at_counts.add_(log_gamma_ratio))

    @staticmethod
    def backward(ctx, grad):
        (
            rate,
            library,
            theta_plus_rate,
            log_theta_plus_rate,
            theta_groups,
            group,
            group_at,
            theta_at,
            theta_plus_rate_at,
        ) = ctx.saved_tensors
        nonzeros = ctx.nonzeros
        counts = nonzeros.counts
        grad_rows = grad.unsqueeze(1)
        grad_at = grad.index_select(0, nonzeros.rows)
        ratio = rate / theta_plus_rate  # mu / (theta + mu)
        grad_theta_groups = None
        if ctx.needs_input_grad[2]:
            # d/d theta: log theta - log(theta + mu) + mu / (theta + mu), plus where x > 0
            # -x / (theta + mu) + digamma(x + theta) - digamma(theta); theta is constant within a group's column
            group_weights = (F.one_hot(group, ctx.n_groups).to(grad.dtype) * grad_rows).T  # (groups, rows)
            grad_theta_groups = group_weights.sum(dim=1, keepdim=True) * torch.log(theta_groups)
            grad_theta_groups += group_weights @ ratio - group_weights @ log_theta_plus_rate
            at_counts = _digamma_increment(
                counts, theta_at, torch.digamma(theta_groups).view(-1), group_at, nonzeros.not_one
            )
            grad_theta_groups.view(-1).index_add_(0, group_at, (at_counts - counts / theta_plus_rate_at) * grad_at)
        # d/d log mu: -theta mu / (theta + mu) = mu (mu / (theta + mu) - 1) everywhere, plus x theta / (theta + mu)
        # where x > 0; times the row's output gradient
        grad_log_rate = ratio.sub_(1.0).mul_(rate).mul_(grad_rows)
        grad_log_rate.view(-1).index_add_(0, nonzeros.flat, counts * theta_at / theta_plus_rate_at * grad_at)
        grad_log_library = grad_log_rate.sum(dim=1, keepdim=True)
        # log mu = logits - logsumexp(logits) + log_library: subtract softmax * the row sum
        grad_logits = grad_log_rate.addcmul_(rate, grad_log_library / library, value=-1.0)
        return grad_logits, grad_log_library, grad_theta_groups, None, None


def _digamma_increment(
    counts: torch.Tensor,
    theta: torch.Tensor,
    digamma_table: torch.Tensor,
    table_index: torch.Tensor,
    not_one: torch.Tensor,
) -> torch.Tensor:
    """``digamma(counts + theta) - digamma(theta)`` for counts > 0, ``digamma(theta)`` read from a table.

    It is ``1 / theta`` at ``counts == 1`` (``digamma(1 + t) = digamma(t) + 1 / t``), most non-zero counts of
    single-cell data; ``digamma`` is evaluated at the others only, whose positions are ``not_one``.
    """
    increment = theta.reciprocal()
    digamma_at = torch.digamma(counts.index_select(0, not_one) + theta.index_select(0, not_one))
    digamma_theta = digamma_table.index_select(0, table_index.index_select(0, not_one))
    return increment.index_copy_(0, not_one, digamma_at - digamma_theta)


class _BernoulliWithDepth(torch.autograd.Function):
    """Per-row ``sum_j log Bernoulli(x_j > 0; p_j)``, ``log p = logsigmoid(logits) + log_depth + log_region``."""

    @staticmethod
    def forward(ctx, logits, log_depth, log_region, nonzeros: Nonzeros):
        log_p = F.logsigmoid(logits).add_(log_depth).add_(log_region)
        one_minus_p = torch.expm1(log_p).neg_()
        log_not_p = torch.log(one_minus_p)
        # log(1 - p) over all features, plus log p - log(1 - p) at the open ones
        flat = nonzeros.flat
        at_open = log_p.reshape(-1).index_select(0, flat) - log_not_p.reshape(-1).index_select(0, flat)
        ctx.save_for_backward(logits, one_minus_p)
        ctx.nonzeros = nonzeros
        return log_not_p.sum(dim=1).index_add(0, nonzeros.rows, at_open)

    @staticmethod
    def backward(ctx, grad):
        logits, one_minus_p = ctx.saved_tensors
        flat = ctx.nonzeros.flat
        # d/d log p: -p / (1 - p) = 1 - 1 / (1 - p) at closed features, 1 at open ones (log-likelihood log p)
        grad_log_p = one_minus_p.reciprocal().neg_().add_(1.0)
        grad_log_p.view(-1).index_fill_(0, flat, 1.0)
        grad_log_p.mul_(grad.unsqueeze(1))
        grad_log_depth = grad_log_p.sum(dim=1, keepdim=True) if ctx.needs_input_grad[1] else None
        grad_log_region = grad_log_p.sum(dim=0) if ctx.needs_input_grad[2] else None
        # d logsigmoid(h) / dh = sigmoid(-h)
        grad_logits = grad_log_p.mul_(torch.neg(logits).sigmoid_())
        return grad_logits, grad_log_depth, grad_log_region, None


def softmax_negative_binomial(
    logits: torch.Tensor,
    log_library: torch.Tensor,
    theta_groups: torch.Tensor,
    group: torch.Tensor,
    x: torch.Tensor,
    nonzero_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed NB log-likelihood of ``x`` ``(n, features)`` for each row of ``logits`` ``(..., n, features)``.

    The mean is ``exp(log_library) * softmax(logits)``; row ``r`` (of the leading axes times ``n``) has inverse
    dispersion ``theta_groups[group[r]]``. ``nonzero_index``: see :class:`Nonzeros`. Returns ``(..., n)``.
    """
    leading, n_features = logits.shape[:-1], logits.shape[-1]
    nonzeros = Nonzeros(x, logits[..., 0].numel() // x.shape[0], nonzero_index)
    logits, log_library, theta_groups = _full_precision(logits, log_library, theta_groups)
    with torch.autocast(x.device.type, enabled=False):
        log_lik = _SoftmaxNegativeBinomial.apply(
            logits.reshape(-1, n_features), log_library.reshape(-1, 1), theta_groups, group.reshape(-1), nonzeros
        )
    return log_lik.view(leading)


def bernoulli_with_depth(
    logits: torch.Tensor,
    log_depth: torch.Tensor,
    log_region: torch.Tensor,
    x: torch.Tensor,
    nonzero_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed Bernoulli log-likelihood of ``x > 0`` ``(n, features)`` for each row of ``logits`` ``(..., n, features)``.

    ``log p = logsigmoid(logits) + log_depth + log_region`` with ``log_depth`` one value per row and
    ``log_region`` one per feature. ``nonzero_index``: see :class:`Nonzeros`. Returns ``(..., n)``.
    """
    leading, n_features = logits.shape[:-1], logits.shape[-1]
    nonzeros = Nonzeros(x, logits[..., 0].numel() // x.shape[0], nonzero_index)
    logits, log_depth, log_region = _full_precision(logits, log_depth, log_region)
    with torch.autocast(x.device.type, enabled=False):
        log_lik = _BernoulliWithDepth.apply(
            logits.reshape(-1, n_features), log_depth.reshape(-1, 1), log_region, nonzeros
        )
    return log_lik.view(leading)


def _full_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in float32 where they are in a lower precision (decoder outputs under bf16/fp16 autocast)."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)
