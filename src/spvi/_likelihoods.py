"""The likelihood table: one entry per observation model, from its name to its decoder head.

Each head maps the decoder's hidden layer to the parameters of one modality's likelihood and knows
three things about that likelihood: how to read the raw data into the encoder, the element-wise
log-likelihood of the data, and the expected value (what :meth:`spvi.SPVI.predict` returns).

The log-likelihood is split into a kernel, which depends on the parameters, and a base measure, which
depends on the data only (``-log x!`` for NB and Poisson). The objectives evaluate each modality's
likelihood under several latent samples, through ``log_likelihood`` (summed over features): the base
measure is computed once per cell, sums over per-feature dispersions once per feature, and for count
data the terms that vanish at zero counts (``lgamma``, ``x log mu``) only at the non-zero entries, which
are a few percent of single-cell data. The ``nb`` and ``bernoulli`` sums are computed by the kernels of
:mod:`spvi._likelihood_kernels`, with hand-written gradients, from the decoder's logits directly; the heads'
parameters are therefore the logits and per-row scales (``log_library``, ``log_depth``), and the per-feature
dispersions and peak factors are read from the head itself.

==============  ==============================  =========================================================
name            data                            model
==============  ==============================  =========================================================
``nb``          counts (RNA)                    negative binomial, mean ``library * softmax``, per-feature
                                                inverse dispersion (scVI)
``zinb``        counts (RNA)                    zero-inflated negative binomial (scVI)
``poisson``     counts (RNA, ATAC fragments)    Poisson, rate ``library * softmax``
``bernoulli``   counts, binarised (ATAC)        Bernoulli on ``x > 0``, probability times a learned
                                                per-cell depth and per-peak factor (PeakVI)
``nbmixture``   counts (protein, ADT)           two-component NB mixture, background and foreground
                                                (totalVI)
``gaussian``    continuous (methylation         Normal with learned per-feature standard deviation;
                M-values, normalised bulk)      ``NaN`` entries are "not measured" and masked
==============  ==============================  =========================================================
"""

from __future__ import annotations

import math

import torch
from scvi.distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from torch import nn
from torch.nn import functional as F

from spvi._likelihood_kernels import Nonzeros, bernoulli_with_depth, softmax_negative_binomial

_EPS = 1e-8
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Bounds that keep count parameters finite when the decoder is driven far from the data.
_MAX_LOG_RATE = 15.0
_MIN_LOG_THETA, _MAX_LOG_THETA = -10.0, 12.0
_MAX_LOG_P = math.log1p(-1e-6)  # probabilities below 1, so that log(1 - p) stays finite


def _theta(log_theta: torch.Tensor) -> torch.Tensor:
    """Inverse dispersion from its logarithm, bounded so that it stays finite."""
    return torch.exp(torch.clamp(log_theta, _MIN_LOG_THETA, _MAX_LOG_THETA))


class LikelihoodHead(nn.Module):
    """Base class of a decoder head: hidden layer -> parameters of one modality's likelihood.

    Parameters
    ----------
    n_hidden
        Width of the decoder's last hidden layer.
    n_output
        Number of features of the modality.
    marginal_dispersion
        Learn a second per-feature dispersion (Gaussian sd, NB inverse dispersion) for rows decoded with
        the private block at its prior mean, i.e. cross-modal reconstructions. Their likelihood stands in
        for ``p(x_m | z_shared)``, the marginal over the unseen private block, which is wider than the
        conditional ``p(x_m | z_shared, z_private_m)``. ``False``: one dispersion for both (the paper).
    """

    #: Whether the likelihood is for non-negative integer counts.
    is_count: bool = True
    #: Whether the mean scales with the cell's observed library size.
    uses_library: bool = False

    def __init__(self, n_hidden: int, n_output: int, marginal_dispersion: bool = True):
        super().__init__()
        self.n_output = n_output
        self.marginal_dispersion = marginal_dispersion

    def _marginal_parameter(self, conditional: nn.Parameter) -> nn.Parameter | None:
        """A copy of a dispersion parameter for marginal rows, or ``None`` without ``marginal_dispersion``."""
        return nn.Parameter(conditional.detach().clone()) if self.marginal_dispersion else None

    #: Whether the per-cell scale of the mean is learned (:meth:`library` is a network), not observed.
    learns_depth: bool = False

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Transform raw data into the encoder's input (``log1p`` for counts)."""
        return torch.log1p(x)

    def library(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell scale of the mean, ``(n, 1)``: the observed library size, at least 1 (where ``uses_library``)."""
        return x.nansum(dim=1, keepdim=True).clamp(min=1.0)

    def forward(self, hidden: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters of the likelihood for each row of ``hidden``.

        ``marginal`` (``(rows, 1)`` bool) marks rows decoded with the private block at its prior mean
        (cross-modal predictions): they use the marginal dispersion, which also covers the variation the
        missing private block would explain.
        """
        raise NotImplementedError

    def _per_row(
        self, marginal: torch.Tensor, conditional_value: torch.Tensor, marginal_value: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-row choice between the conditional and the marginal per-feature dispersion, ``(rows, n_output)``."""
        if marginal_value is None:
            return conditional_value.expand(marginal.shape[0], -1)
        return torch.where(marginal, marginal_value, conditional_value)

    def log_prob(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Element-wise log-likelihood of ``x`` (same shape as ``x``)."""
        base_measure = self.log_base_measure(x)
        kernel = self.log_kernel(x, params)
        return kernel if base_measure is None else kernel + base_measure

    def log_likelihood(
        self, x: torch.Tensor, params: dict[str, torch.Tensor], nonzero_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log-likelihood of each cell's data summed over features, ``params`` with optional leading axes.

        The same value as ``log_prob(x, params).sum(-1)``; the base measure is computed once for all leading
        axes. Count heads override it with a form that evaluates the terms that vanish at ``x == 0`` on the
        non-zero entries only (the training loss calls this for every minibatch); ``nonzero_index``, the
        positions of those entries in ``x.view(-1)`` when the data loader knows them, saves searching for them.
        """
        log_lik = self.log_kernel(x, params).sum(dim=-1)
        base_measure = self.log_base_measure(x)
        return log_lik if base_measure is None else log_lik + base_measure.sum(dim=-1)

    def log_kernel(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The part of the element-wise log-likelihood that depends on the parameters.

        ``x`` broadcasts against the parameters (the module passes ``(n, features)`` data with
        ``(n_samples, n, features)`` parameters).
        """
        raise NotImplementedError

    def log_base_measure(self, x: torch.Tensor) -> torch.Tensor | None:
        """The part of the element-wise log-likelihood that depends on the data only (``None``: nothing)."""
        return None

    def expected_value(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the likelihood on the data scale."""
        raise NotImplementedError

    def denoised_mean(self, params: dict[str, torch.Tensor], include_background: bool = False) -> torch.Tensor:
        """Mean without the likelihood's technical components (what ``get_normalized_expression`` returns).

        The mean of the likelihood for most heads; without the zero inflation for ``zinb`` (scVI's normalised
        expression) and, unless ``include_background``, without the background component for ``nbmixture``
        (totalVI's ``include_protein_background``).
        """
        return self.expected_value(params)

    def sample(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """One draw from the likelihood per entry of the parameters, on the data scale."""
        raise NotImplementedError


class _SoftmaxRateHead(LikelihoodHead):
    """Shared part of NB, ZINB and Poisson: ``rate = library * softmax(W h + b)``.

    The parameters are the ``logits`` ``W h + b`` and the bounded per-cell ``log_library``; :meth:`log_rate`
    combines them.
    """

    uses_library = True

    def __init__(self, n_hidden: int, n_output: int, marginal_dispersion: bool = True):
        super().__init__(n_hidden, n_output, marginal_dispersion)
        self.scale_logits = nn.Linear(n_hidden, n_output)

    def forward(self, hidden: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor) -> dict[str, torch.Tensor]:
        # log_softmax <= 0, so bounding the per-cell log library bounds every log rate (one value per row, not
        # a bound per entry: cheaper, and the same wherever the rate is below the bound)
        return {
            "logits": self.scale_logits(hidden),
            "log_library": torch.clamp(torch.log(library), max=_MAX_LOG_RATE),
        }

    @staticmethod
    def log_rate(params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logarithm of the rate (the mean of NB and Poisson), same shape as the logits."""
        return F.log_softmax(params["logits"], dim=-1) + params["log_library"]

    def expected_value(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.exp(self.log_rate(params))


class NegativeBinomialHead(_SoftmaxRateHead):
    """Negative binomial with per-feature inverse dispersion, as in scVI.

    The parameters also hold ``marginal`` (per row: use the marginal dispersion); the per-feature inverse
    dispersions are the head's own parameters.
    """

    def __init__(self, n_hidden: int, n_output: int, marginal_dispersion: bool = True):
        super().__init__(n_hidden, n_output, marginal_dispersion)
        self.log_theta = nn.Parameter(torch.randn(n_output))
        self.log_theta_marginal = self._marginal_parameter(self.log_theta)

    def forward(self, hidden: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().forward(hidden, library, marginal), "marginal": marginal}

    def _theta_groups(self) -> torch.Tensor:
        """``(2, features)``: the conditional and the marginal inverse dispersion."""
        marginal = self.log_theta if self.log_theta_marginal is None else self.log_theta_marginal
        return _theta(torch.stack([self.log_theta, marginal]))

    def theta(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse dispersion of each entry of the parameters, same shape as the logits."""
        theta_groups = self._theta_groups()
        return torch.where(params["marginal"], theta_groups[1], theta_groups[0])

    def log_kernel(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        # log NB(x; mu, theta) as in scvi.distributions.NegativeBinomial, without -lgamma(x + 1)
        theta, log_rate = self.theta(params), self.log_rate(params)
        log_theta_mu = torch.log(theta + torch.exp(log_rate))
        return (
            theta * (torch.log(theta) - log_theta_mu)
            + x * (log_rate - log_theta_mu)
            + torch.lgamma(x + theta)
            - torch.lgamma(theta)
        )

    def log_likelihood(
        self, x: torch.Tensor, params: dict[str, torch.Tensor], nonzero_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        # one pass of the softmax and the likelihood with closed-form gradients (see _likelihood_kernels)
        return softmax_negative_binomial(
            params["logits"], params["log_library"], self._theta_groups(), params["marginal"].long(), x, nonzero_index
        )

    def log_base_measure(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.lgamma(x + 1)

    def _distribution(self, params: dict[str, torch.Tensor]) -> NegativeBinomial:
        return NegativeBinomial(mu=torch.exp(self.log_rate(params)) + _EPS, theta=self.theta(params))

    def sample(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._distribution(params).sample()


class ZeroInflatedNegativeBinomialHead(NegativeBinomialHead):
    """Zero-inflated negative binomial, as in scVI."""

    def __init__(self, n_hidden: int, n_output: int, marginal_dispersion: bool = True):
        super().__init__(n_hidden, n_output, marginal_dispersion)
        self.dropout_logits = nn.Linear(n_hidden, n_output)

    def forward(self, hidden: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor) -> dict[str, torch.Tensor]:
        params = super().forward(hidden, library, marginal)
        params["zi_logits"] = self.dropout_logits(hidden)
        return params

    def _distribution(self, params: dict[str, torch.Tensor]) -> ZeroInflatedNegativeBinomial:
        return ZeroInflatedNegativeBinomial(
            mu=torch.exp(self.log_rate(params)) + _EPS, theta=self.theta(params), zi_logits=params["zi_logits"]
        )

    def log_kernel(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._distribution(params).log_prob(x)

    def log_base_measure(self, x: torch.Tensor) -> None:
        return None  # part of scvi-tools' ZINB log-likelihood in log_kernel

    log_likelihood = LikelihoodHead.log_likelihood  # the zero inflation gives zeros a parameter-dependent term

    def expected_value(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.exp(self.log_rate(params)) * torch.sigmoid(-params["zi_logits"])

    def denoised_mean(self, params: dict[str, torch.Tensor], include_background: bool = False) -> torch.Tensor:
        # the zero inflation is technical (scVI's normalised expression leaves it out)
        return torch.exp(self.log_rate(params))


class PoissonHead(_SoftmaxRateHead):
    """Poisson with rate ``library * softmax``."""

    def log_kernel(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        log_rate = self.log_rate(params)
        return x * log_rate - torch.exp(log_rate)

    def log_likelihood(
        self, x: torch.Tensor, params: dict[str, torch.Tensor], nonzero_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        # the rates of a row sum to its library, so -sum(rate) is -library; x log(rate) - lgamma(x + 1) where x > 0
        logits = params["logits"].reshape(-1, params["logits"].shape[-1])
        log_library = params["log_library"].reshape(-1)
        nonzeros = Nonzeros(x, logits.shape[0] // x.shape[0], nonzero_index)
        log_normaliser = torch.logsumexp(logits, dim=1) - log_library
        log_rate_at = logits.reshape(-1)[nonzeros.flat] - log_normaliser[nonzeros.rows]
        at_counts = nonzeros.counts * log_rate_at - torch.lgamma(nonzeros.counts + 1)
        log_lik = (-torch.exp(log_library)).index_add(0, nonzeros.rows, at_counts)
        return log_lik.view(params["logits"].shape[:-1])

    def log_base_measure(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.lgamma(x + 1)

    def sample(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.poisson(self.expected_value(params))


class BernoulliHead(LikelihoodHead):
    """Bernoulli on binarised counts (``x > 0``, ATAC peaks) with PeakVI's depth and region factors.

    ``p = sigmoid(decoded) * depth * sigmoid(region)``: ``depth`` in (0, 1) is a per-cell factor learned from the
    cell's binarised profile by a small network (:meth:`library`; sequencing depth and quality need not go into
    ``z``), ``region`` a learned per-peak factor (peaks that are rarely seen open anywhere), as in PeakVI and
    MULTIVI. Cells that lack the modality are predicted at the typical depth (a running median over training
    minibatches kept by the module).
    """

    uses_library = True
    learns_depth = True

    def __init__(self, n_hidden: int, n_output: int, marginal_dispersion: bool = True):
        super().__init__(n_hidden, n_output, marginal_dispersion)
        self.logits = nn.Linear(n_hidden, n_output)
        self.region_logits = nn.Parameter(torch.zeros(n_output))
        self.depth_encoder = nn.Sequential(nn.Linear(n_output, n_hidden), nn.LeakyReLU(), nn.Linear(n_hidden, 1))

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        # 1 where x > 0, else 0: sign() and clamp are two cheap passes; (x > 0).to(dtype) was 10x slower on CPU
        return torch.sign(x).clamp_(min=0.0)

    def library(self, x: torch.Tensor) -> torch.Tensor:
        """The learned depth factor of each cell, ``(n, 1)`` in (0, 1)."""
        return torch.sigmoid(self.depth_encoder(self.encoder_input(x)))

    def forward(self, hidden: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor) -> dict[str, torch.Tensor]:
        # both sigmoid factors are <= 1, so bounding the per-cell depth keeps p below 1 (log(1 - p) finite)
        return {"logits": self.logits(hidden), "log_depth": torch.clamp(torch.log(library + _EPS), max=_MAX_LOG_P)}

    def log_p(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logarithm of the probability that each feature is open, same shape as the logits."""
        return F.logsigmoid(params["logits"]) + params["log_depth"] + F.logsigmoid(self.region_logits)

    def log_kernel(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        log_p = self.log_p(params)
        log_not_p = torch.log(-torch.expm1(log_p))
        return torch.where(x > 0, log_p, log_not_p)

    def log_likelihood(
        self, x: torch.Tensor, params: dict[str, torch.Tensor], nonzero_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        # one pass with closed-form gradients (see _likelihood_kernels)
        log_region = F.logsigmoid(self.region_logits)
        return bernoulli_with_depth(params["logits"], params["log_depth"], log_region, x, nonzero_index)

    def expected_value(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.exp(self.log_p(params))

    def sample(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.bernoulli(self.expected_value(params))


class NegativeBinomialMixtureHead(LikelihoodHead):
    """Background/foreground NB mixture for protein counts, as in totalVI.

    The background rate is decoded per cell and protein; the foreground rate is the background times
    ``1 + softplus(.)``, so it is always larger; the mixing weight of the background is ``sigmoid(logits)``.
    Protein counts are not scaled by a library size (as in totalVI).
    """

    def __init__(self, n_hidden: int, n_output: int, marginal_dispersion: bool = True):
        super().__init__(n_hidden, n_output, marginal_dispersion)
        self.log_background = nn.Linear(n_hidden, n_output)
        self.foreground_increase = nn.Linear(n_hidden, n_output)
        self.background_logits = nn.Linear(n_hidden, n_output)
        self.log_theta = nn.Parameter(2.0 * torch.rand(n_output))
        self.log_theta_marginal = self._marginal_parameter(self.log_theta)

    def forward(self, hidden: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor) -> dict[str, torch.Tensor]:
        background = torch.exp(torch.clamp(self.log_background(hidden), max=_MAX_LOG_RATE))
        foreground = background * (1.0 + F.softplus(self.foreground_increase(hidden)))
        return {
            "background": background,
            "foreground": foreground,
            "logits": self.background_logits(hidden),
            "theta": _theta(self._per_row(marginal, self.log_theta, self.log_theta_marginal)),
        }

    def log_kernel(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        theta = params["theta"]
        distribution = NegativeBinomialMixture(
            mu1=params["background"] + _EPS,
            mu2=params["foreground"] + _EPS,
            theta1=theta,
            mixture_logits=params["logits"],
        )
        return distribution.log_prob(x)

    def expected_value(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.denoised_mean(params, include_background=True)

    def denoised_mean(self, params: dict[str, torch.Tensor], include_background: bool = False) -> torch.Tensor:
        weight_background = torch.sigmoid(params["logits"])
        foreground = (1.0 - weight_background) * params["foreground"]
        return foreground + weight_background * params["background"] if include_background else foreground

    def sample(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return NegativeBinomialMixture(
            mu1=params["background"] + _EPS,
            mu2=params["foreground"] + _EPS,
            theta1=params["theta"],
            mixture_logits=params["logits"],
        ).sample()


class GaussianHead(LikelihoodHead):
    """Normal with a learned per-feature standard deviation; ``NaN`` in the data is masked ("not measured").

    The data are standardised per feature inside the model (``feature_mean`` and ``feature_scale``, set by
    :meth:`set_feature_statistics` from the training data and saved with the model): the encoder reads
    standardised values and the decoder's ``loc`` and ``scale`` are in standard units, so features on very
    different scales (log expression with means of ~18 beside M-values near 0) start and train alike. The
    log-likelihood includes the Jacobian ``-log(feature_scale)``, so it is that of the data on the user's
    scale, and :meth:`expected_value` returns the user's scale.
    """

    is_count = False

    def __init__(self, n_hidden: int, n_output: int, marginal_dispersion: bool = True):
        super().__init__(n_hidden, n_output, marginal_dispersion)
        self.loc = nn.Linear(n_hidden, n_output)
        # softplus(-1) ~ 0.31: the reference implementation's starting noise level for standardised features
        self.raw_scale = nn.Parameter(-torch.ones(n_output))
        self.raw_scale_marginal = self._marginal_parameter(self.raw_scale)
        self.register_buffer("feature_mean", torch.zeros(n_output))
        self.register_buffer("feature_scale", torch.ones(n_output))

    def set_feature_statistics(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Set the per-feature mean and standard deviation used to standardise the data."""
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=self.feature_mean.dtype))
        self.feature_scale.copy_(torch.as_tensor(scale, dtype=self.feature_scale.dtype))

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feature_mean) / self.feature_scale

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(self._standardize(x), nan=0.0)  # not measured: the feature's mean

    def forward(self, hidden: torch.Tensor, library: torch.Tensor, marginal: torch.Tensor) -> dict[str, torch.Tensor]:
        raw_scale = self._per_row(marginal, self.raw_scale, self.raw_scale_marginal)
        return {"loc": self.loc(hidden), "scale": F.softplus(raw_scale) + 1e-4}

    def log_kernel(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        observed = ~torch.isnan(x)
        loc, scale = params["loc"], params["scale"]
        standardized = (torch.where(observed, self._standardize(x), loc) - loc) / scale
        log_prob = -0.5 * standardized.pow(2) - torch.log(scale * self.feature_scale) - _HALF_LOG_2PI
        return torch.where(observed, log_prob, torch.zeros_like(log_prob))

    def expected_value(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return params["loc"] * self.feature_scale + self.feature_mean

    def sample(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        standardized = torch.normal(params["loc"], params["scale"].expand_as(params["loc"]))
        return standardized * self.feature_scale + self.feature_mean


#: Likelihood name -> decoder head class. The names are the public values of ``likelihoods=`` in
#: :meth:`spvi.SPVI.setup_mudata`.
LIKELIHOODS: dict[str, type[LikelihoodHead]] = {
    "nb": NegativeBinomialHead,
    "zinb": ZeroInflatedNegativeBinomialHead,
    "poisson": PoissonHead,
    "bernoulli": BernoulliHead,
    "nbmixture": NegativeBinomialMixtureHead,
    "gaussian": GaussianHead,
}
