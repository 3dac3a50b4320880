"""Layers: one encoder and one decoder per modality, built from :class:`scvi.nn.FCLayers`."""

from __future__ import annotations

import torch
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F

from spvi._likelihoods import LikelihoodHead

_MIN_SCALE = 1e-4


def _mlp(n_input: int, n_output: int, n_cat_list: list[int], n_layers: int, dropout_rate: float, use_layer_norm: bool):
    """The paper's trunk: ``n_layers`` x ``n_output`` LeakyReLU layers, categorical covariates injected (scVI)."""
    return FCLayers(
        n_in=n_input,
        n_out=n_output,
        n_cat_list=n_cat_list,
        n_layers=n_layers,
        n_hidden=n_output,
        dropout_rate=dropout_rate,
        use_batch_norm=False,
        use_layer_norm=use_layer_norm,
        activation_fn=nn.LeakyReLU,
        inject_covariates=True,
    )


class _GaussianHead(nn.Module):
    """Linear map from a hidden layer to a diagonal Gaussian (mean, softplus standard deviation)."""

    def __init__(self, n_hidden: int, n_latent: int):
        super().__init__()
        self.linear = nn.Linear(n_hidden, 2 * n_latent)

    def forward(self, hidden: torch.Tensor) -> Normal:
        mean, raw_scale = self.linear(hidden).chunk(2, dim=-1)
        # the scale is positive by construction: no argument validation (it costs several ops per minibatch)
        return Normal(mean, F.softplus(raw_scale) + _MIN_SCALE, validate_args=False)


class ModalityEncoder(nn.Module):
    """Encoder of one modality: ``x_m`` (and covariates) -> ``q_m(z_shared | x_m)``, ``q_m(z_private_m | x_m)``.

    The two posteriors share the hidden layers and have separate output heads, so a gradient that is
    cut at ``z_shared`` never reaches ``shared_head``.
    """

    def __init__(
        self,
        n_input: int,
        n_shared: int,
        n_private: int,
        n_hidden: int,
        n_layers: int,
        n_cat_list: list[int],
        dropout_rate: float,
        use_layer_norm: bool,
    ):
        super().__init__()
        self.trunk = _mlp(n_input, n_hidden, n_cat_list, n_layers, dropout_rate, use_layer_norm)
        self.shared_head = _GaussianHead(n_hidden, n_shared)
        self.private_head = _GaussianHead(n_hidden, n_private)

    def forward(self, x: torch.Tensor, *categorical: torch.Tensor) -> tuple[Normal, Normal]:
        """Posterior of the shared and the private latent block."""
        hidden = self.trunk(x, *categorical)
        return self.shared_head(hidden), self.private_head(hidden)


class ModalityDecoder(nn.Module):
    """Decoder of one modality: ``[z_shared, z_private_m]`` (and covariates) -> likelihood parameters."""

    def __init__(
        self,
        n_latent: int,
        likelihood_head: LikelihoodHead,
        n_hidden: int,
        n_layers: int,
        n_cat_list: list[int],
        dropout_rate: float,
        use_layer_norm: bool,
    ):
        super().__init__()
        self.trunk = _mlp(n_latent, n_hidden, n_cat_list, n_layers, dropout_rate, use_layer_norm)
        self.likelihood = likelihood_head

    def forward(
        self, z: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor, *categorical: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters for each row of ``z``; ``marginal`` marks rows whose private block is at 0."""
        return self.likelihood(self.trunk(z, *categorical), library, marginal)
