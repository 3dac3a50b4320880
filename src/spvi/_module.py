"""The partitioned-latent multimodal VAE and its four objectives (the maths of spvi)."""

from __future__ import annotations

import functools
import math

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F

from spvi._constants import PRESENCE_KEY, data_key, nonzero_key
from spvi._divergences import jeffreys_divergence, standard_normal_kl
from spvi._likelihoods import LIKELIHOODS
from spvi._nn import ModalityDecoder, ModalityEncoder
from spvi._objectives import Objective, Term, make_objective

#: choices of the target's private block in cross-modal terms (see :class:`SPVAE`)
CROSS_MODAL_PRIVATE = ("zero", "posterior")
#: weight of each training minibatch in the running median of a learned depth factor
_DEPTH_MOMENTUM = 0.05


def product_of_experts(qz: list[Normal], weights: torch.Tensor) -> Normal:
    """Product of Gaussian experts and the prior ``N(0, I)``.

    Parameters
    ----------
    qz
        One diagonal Gaussian per expert, each ``(n, d)``.
    weights
        ``(n, n_experts)``: 1 where an expert takes part for a cell, 0 where it does not.
    """
    precision = torch.ones_like(qz[0].loc)
    weighted_mean = torch.zeros_like(qz[0].loc)
    for j, q in enumerate(qz):
        expert_precision = weights[:, j : j + 1] / q.scale.pow(2)
        precision = precision + expert_precision
        weighted_mean = weighted_mean + expert_precision * q.loc
    return Normal(weighted_mean / precision, precision.rsqrt(), validate_args=False)


def _rsample(q: Normal) -> torch.Tensor:
    """``q.rsample()``, the same draw, as one differentiable operator: ``loc + eps * scale``."""
    return torch.addcmul(q.loc, torch.randn_like(q.loc), q.scale)


class SPVAE(BaseModuleClass):
    """Multimodal VAE with latent ``[z_shared, z_private_1, ..., z_private_M]``.

    Encoder ``m`` gives ``q_m(z_shared | x_m)`` and ``q_m(z_private_m | x_m)``; decoder ``m`` maps
    ``[z_shared, z_private_m]`` to the parameters of modality ``m``'s likelihood. The objective
    (:mod:`spvi._objectives`) decides which ELBO terms are summed.

    Parameters
    ----------
    n_input
        Number of features per modality.
    likelihoods
        Likelihood name per modality (keys of :data:`spvi._likelihoods.LIKELIHOODS`).
    modalities
        Modality names (used as registry keys of the data).
    n_shared
        Dimension of ``z_shared``.
    n_private
        Dimension of each ``z_private_m``.
    objective
        ``"mmvae++"``, ``"mmvae"``, ``"mopoe"`` or ``"mvae"``.
    n_hidden
        Width of the hidden layers.
    n_layers
        Number of hidden layers of each encoder and decoder.
    n_batch
        Number of batches (0 or 1: no batch covariate).
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    n_labels
        Number of label classes for the semi-supervised label head on ``z_shared`` (0: no label head).
    label_weight
        Weight of the label cross-entropy.
    dropout_rate
        Dropout in the hidden layers.
    use_layer_norm
        Layer normalisation in the hidden layers.
    library_median
        Median library size per modality, used to predict counts of cells that lack the target modality.
    marginal_dispersion
        Separate per-feature dispersion for cross-modal reconstructions (see
        :class:`spvi._likelihoods.LikelihoodHead`). Only built where training uses it: with
        ``cross_modal_private="zero"`` and an objective with cross-modal terms (not MVAE); otherwise prediction
        and ``cross_modal_nll`` use the one trained dispersion.
    cross_modal_private
        Private block of the target in cross-modal terms: ``"zero"`` (its prior mean, the paper) or
        ``"posterior"`` (a sample of the target's own private posterior with its gradient cut, so that
        ``z_shared`` is not rewarded for explaining the target's private variation).
    encode_covariates
        Also feed the batch and categorical covariates to the encoders (they always reach the decoders).
    alignment_weight
        Weight of the alignment term: for every cell and every pair of its observed modalities, the symmetric
        KL divergence (Jeffreys) between the two experts' posteriors of ``z_shared`` (MULTIVI's modality
        penalty), added to the loss. It makes the experts agree, so that a cell measured in one modality lands
        where the paired cells of its kind are. It acts on the shared heads only and rewards what both
        modalities can tell, so it does not undo MMVAE++'s stop-gradient. 0 switches it off.
    shared_kl_weight
        Factor on the KL divergence of ``z_shared`` (each term's joint posterior against the prior) in the training
        loss, on top of the KL weight; the private blocks' KL keeps factor 1. 1 (the default) is the ELBO, which
        the reported KL (``kl_local``) and :meth:`~spvi.SPVI.get_elbo` always use.
    """

    def __init__(
        self,
        n_input: list[int],
        likelihoods: list[str],
        modalities: list[str],
        n_shared: int,
        n_private: list[int],
        objective: str = "mmvae++",
        n_hidden: int = 128,
        n_layers: int = 1,
        n_batch: int = 0,
        n_cats_per_cov: list[int] | None = None,
        n_labels: int = 0,
        label_weight: float = 1.0,
        dropout_rate: float = 0.0,
        use_layer_norm: bool = False,
        library_median: list[float] | None = None,
        marginal_dispersion: bool = True,
        cross_modal_private: str = "zero",
        encode_covariates: bool = False,
        alignment_weight: float = 1.0,
        shared_kl_weight: float = 1.0,
    ):
        super().__init__()
        if alignment_weight < 0:
            raise ValueError(f"alignment_weight must be >= 0, got {alignment_weight!r}")
        self.alignment_weight = alignment_weight
        if not shared_kl_weight >= 0:
            raise ValueError(f"shared_kl_weight must be >= 0, got {shared_kl_weight!r}")
        self.shared_kl_weight = shared_kl_weight
        if cross_modal_private not in CROSS_MODAL_PRIVATE:
            raise ValueError(f"cross_modal_private must be one of {CROSS_MODAL_PRIVATE}, got {cross_modal_private!r}")
        self.cross_modal_private = cross_modal_private
        self.modalities = list(modalities)
        self.n_modalities = len(self.modalities)
        self.n_shared = n_shared
        self.n_private = list(n_private)
        self.objective_name = objective
        self.objective: Objective = make_objective(objective, self.n_modalities)
        self.n_labels = n_labels
        self.label_weight = label_weight

        n_cat_list = [n_batch, *(n_cats_per_cov or [])]
        layer_kwargs = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_cat_list": n_cat_list,
            "dropout_rate": dropout_rate,
            "use_layer_norm": use_layer_norm,
        }
        self.encode_covariates = encode_covariates
        encoder_kwargs = layer_kwargs | {"n_cat_list": n_cat_list if encode_covariates else []}
        self.encoders = nn.ModuleList(
            ModalityEncoder(n_input[m], n_shared, self.n_private[m], **encoder_kwargs) for m in range(self.n_modalities)
        )
        # a marginal dispersion only where training rows use it: cross-modal terms with the private block at 0
        self.marginal_dispersion = (
            marginal_dispersion and cross_modal_private == "zero" and self.objective.decodes_across(self.n_modalities)
        )
        self.decoders = nn.ModuleList(
            ModalityDecoder(
                n_shared + self.n_private[m],
                LIKELIHOODS[likelihoods[m]](n_hidden, n_input[m], self.marginal_dispersion),
                **layer_kwargs,
            )
            for m in range(self.n_modalities)
        )
        self.classifier = nn.Linear(n_shared, n_labels) if n_labels > 0 else None
        median = library_median if library_median is not None else [1.0] * self.n_modalities
        self.register_buffer("library_median", torch.tensor(median, dtype=torch.float32))

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load parameters, also those saved by spvi's save format 1.

        Format 1 had no internal standardisation of Gaussian modalities (the identity: mean 0, scale 1) and
        kept marginal dispersions that no training term used (``cross_modal_private="posterior"``, MVAE).
        """
        state = dict(state_dict)
        own_state = self.state_dict()
        for key, value in own_state.items():
            if key not in state and key.endswith(("feature_mean", "feature_scale")):
                state[key] = torch.zeros_like(value) if key.endswith("feature_mean") else torch.ones_like(value)
        state = {key: value for key, value in state.items() if key in own_state or "_marginal" not in key}
        return super().load_state_dict(state, strict=strict, assign=assign)

    # ------------------------------------------------------------------ data plumbing
    def _categorical(self, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Batch and categorical covariates as ``(n, 1)`` int64 columns, the form ``FCLayers`` expects."""
        columns = [tensors[REGISTRY_KEYS.BATCH_KEY].long()]
        cat_covs = tensors.get(REGISTRY_KEYS.CAT_COVS_KEY)
        if cat_covs is not None:
            columns.extend(cat_covs.long().split(1, dim=1))
        return columns

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": [tensors[data_key(name)] for name in self.modalities],
            "presence": tensors[PRESENCE_KEY].bool(),
            "categorical": self._categorical(tensors),
        }

    @auto_move_data
    def inference(self, x: list[torch.Tensor], presence: torch.Tensor, categorical: list[torch.Tensor]) -> dict:
        """Posterior of the shared and the private block from each modality's encoder."""
        qz_shared, qz_private = [], []
        for m, encoder in enumerate(self.encoders):
            encoder_input = self.decoders[m].likelihood.encoder_input(x[m])
            q_shared, q_private = encoder(encoder_input, *(categorical if self.encode_covariates else []))
            qz_shared.append(q_shared)
            qz_private.append(q_private)
        return {"qz_shared": qz_shared, "qz_private": qz_private, "presence": presence}

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> dict:
        return {
            "qz_shared": inference_outputs["qz_shared"],
            "qz_private": inference_outputs["qz_private"],
            "presence": inference_outputs["presence"],
            "library": [
                self.cell_library(m, tensors[data_key(name)], inference_outputs["presence"][:, m : m + 1])
                for m, name in enumerate(self.modalities)
            ],
            "categorical": self._categorical(tensors),
        }

    def cell_library(self, m: int, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """``(n, 1)`` per-cell scale of modality ``m``'s mean; the typical value where ``observed`` is false.

        The observed library size for count likelihoods, the learned depth factor for ``bernoulli``; cells
        that lack the modality get ``library_median[m]``, which for a learned depth is a running median over
        training minibatches.
        """
        head = self.decoders[m].likelihood
        library = head.library(x)
        if head.learns_depth and self.training and observed.any():
            with torch.no_grad():
                batch_median = library[observed.squeeze(1)].median()
                self.library_median[m] = (1 - _DEPTH_MOMENTUM) * self.library_median[m] + _DEPTH_MOMENTUM * batch_median
        return torch.where(observed, library, self.library_median[m].expand_as(library))

    # ------------------------------------------------------------------ posteriors of z_shared
    def _term_experts(self, term: Term, presence: torch.Tensor) -> torch.Tensor:
        """``(n, M)`` bool: the modalities whose encoders form this term's posterior, per cell."""
        if term.experts is None:
            return presence
        selected = torch.zeros_like(presence)
        selected[:, list(term.experts)] = True
        return selected & presence

    def _term_is_valid(self, term: Term, presence: torch.Tensor) -> torch.Tensor:
        """``(n,)`` bool: all experts of the term are observed (or, for ``experts=None``, any is)."""
        if term.experts is None:
            return presence.any(dim=1)
        return presence[:, list(term.experts)].all(dim=1)

    @staticmethod
    def observed_sources(presence: torch.Tensor, sources: list[int]) -> torch.Tensor:
        """``(n, M)`` bool: the modalities among ``sources`` that each cell has."""
        selected = torch.zeros_like(presence)
        selected[:, sources] = True
        return presence & selected

    def _term_posterior(self, term: Term, qz_shared: list[Normal], experts: torch.Tensor) -> Normal:
        """Posterior of ``z_shared`` of one term: a single expert, or the product of experts and prior."""
        if not term.product:
            (expert,) = term.experts
            return qz_shared[expert]
        return product_of_experts(qz_shared, experts.to(qz_shared[0].loc.dtype))

    def _shared_posterior_components(
        self, qz_shared: list[Normal], presence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The valid components of the joint posterior of ``z_shared`` given the modalities in ``presence``.

        Returns ``valid`` ``(n, K)`` bool and the components' means and variances, ``(K, n, d)`` each: for
        MMVAE and MMVAE++ the experts, for MoPoE-VAE the product of experts of every subset, for MVAE the one
        product of experts. The joint posterior is the uniform mixture of a cell's valid components.
        """
        valid, means, variances = [], [], []
        for term in self.objective.posterior:
            component = self._term_posterior(term, qz_shared, self._term_experts(term, presence))
            valid.append(self._term_is_valid(term, presence))
            means.append(component.loc)
            variances.append(component.scale.square())
        return torch.stack(valid, dim=1), torch.stack(means), torch.stack(variances)

    def shared_posterior_moments(
        self, qz_shared: list[Normal], presence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the joint posterior of ``z_shared`` given the modalities in ``presence``.

        The uniform mixture of the valid components (see :meth:`_shared_posterior_components`): its mean is the
        average of the components' means (for MMVAE and MMVAE++ the average of the experts' means), its
        variance the average component variance plus the variance of the component means (the law of total
        variance). ``NaN`` for cells without any component.
        """
        valid, means, variances = self._shared_posterior_components(qz_shared, presence)
        weights = valid.T.unsqueeze(-1).to(means.dtype)  # (K, n, 1)
        count = weights.sum(dim=0)
        count = count.where(count > 0, torch.full_like(count, float("nan")))
        mean = (weights * means).sum(dim=0) / count
        second_moment = (weights * (variances + means.square())).sum(dim=0) / count
        return mean, (second_moment - mean.square()).clamp_min(0.0)

    @staticmethod
    def shared_expert_kl(qz_shared: list[Normal]) -> torch.Tensor:
        """``(n, M)``: KL(q_m(z_shared | x_m) || N(0, I)) of each modality's encoder, summed over dimensions."""
        return torch.stack([standard_normal_kl(q.loc, q.scale) for q in qz_shared], dim=1)

    def shared_posterior_mean(self, qz_shared: list[Normal], presence: torch.Tensor) -> torch.Tensor:
        """Mean of the joint posterior of ``z_shared`` given the modalities in ``presence`` (``NaN``: none)."""
        return self.shared_posterior_moments(qz_shared, presence)[0]

    # ------------------------------------------------------------------ generative model
    @auto_move_data
    def generative(
        self,
        qz_shared: list[Normal],
        qz_private: list[Normal],
        presence: torch.Tensor,
        library: list[torch.Tensor],
        categorical: list[torch.Tensor],
    ) -> dict:
        """Sample each term's latent and decode its targets; each decoder runs once on all its terms.

        Returns the likelihood parameters per target (terms stacked along the first axis), the order of
        the stacked terms, and per term its validity, the KL of its ``z_shared`` and of its private blocks, and its
        shared sample.
        """
        z_private = [_rsample(q) for q in qz_private]
        kl_private = torch.stack([standard_normal_kl(q.loc, q.scale) for q in qz_private], dim=1)  # (n, M)

        decoder_inputs: list[list[torch.Tensor]] = [[] for _ in range(self.n_modalities)]
        marginal: list[list[torch.Tensor]] = [[] for _ in range(self.n_modalities)]
        stacked_terms: list[list[int]] = [[] for _ in range(self.n_modalities)]
        valid, kl_shared, kl_private_blocks, z_shared_samples = [], [], [], []
        for t, term in enumerate(self.objective.terms):
            experts = self._term_experts(term, presence)
            posterior = self._term_posterior(term, qz_shared, experts)
            z_shared = _rsample(posterior)
            z_shared_samples.append(z_shared)
            valid.append(self._term_is_valid(term, presence))
            kl_shared.append(standard_normal_kl(posterior.loc, posterior.scale))
            kl_private_blocks.append((kl_private * experts).sum(dim=1))
            targets = range(self.n_modalities) if term.targets is None else term.targets
            for m in targets:
                own_modality = experts[:, m : m + 1]
                shared_input = z_shared.detach() if term.stop_gradient and term.experts == (m,) else z_shared
                if self.cross_modal_private == "posterior":
                    private_input = torch.where(own_modality, z_private[m], z_private[m].detach())
                    marginal[m].append(torch.zeros_like(own_modality))
                else:
                    private_input = torch.where(own_modality, z_private[m], 0.0)
                    marginal[m].append(~own_modality)
                decoder_inputs[m].append(torch.cat([shared_input, private_input], dim=1))
                stacked_terms[m].append(t)

        params = []
        for m, decoder in enumerate(self.decoders):
            if not decoder_inputs[m]:
                params.append(None)
                continue
            n_terms = len(decoder_inputs[m])
            params.append(
                decoder(
                    torch.cat(decoder_inputs[m], dim=0),
                    library[m].repeat(n_terms, 1),
                    torch.cat(marginal[m], dim=0),
                    *(c.repeat(n_terms, 1) for c in categorical),
                )
            )
        return {
            "params": params,
            "stacked_terms": stacked_terms,
            "valid": torch.stack(valid, dim=1),  # (n, T)
            "kl_shared": torch.stack(kl_shared, dim=1),  # (n, T)
            "kl_private": torch.stack(kl_private_blocks, dim=1),  # (n, T)
            "z_shared": z_shared_samples,
        }

    # ------------------------------------------------------------------ objective
    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO of the objective (plus the weighted label cross-entropy), averaged over cells."""
        kl_shared, kl_private = generative_outputs["kl_shared"], generative_outputs["kl_private"]
        valid = generative_outputs["valid"].to(kl_shared.dtype)
        weights = valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0) if self.objective.mixture else valid
        reconstruction = self.reconstruction_per_term(tensors, inference_outputs["presence"], generative_outputs)
        term_loss = functools.reduce(torch.add, reconstruction) + kl_weight * (
            self.shared_kl_weight * kl_shared + kl_private
        )
        extra_metrics = {}
        if self.classifier is not None:
            label_loss = self._label_loss(tensors[REGISTRY_KEYS.LABELS_KEY], generative_outputs["z_shared"])
            term_loss = term_loss + self.label_weight * label_loss
            extra_metrics["label_loss"] = (weights * label_loss).sum(dim=1).mean().detach()

        loss = (weights * term_loss).sum(dim=1).mean()
        if self.alignment_weight > 0:
            alignment = self.alignment_penalty(inference_outputs["qz_shared"], inference_outputs["presence"]).mean()
            loss = loss + self.alignment_weight * alignment
            extra_metrics["alignment"] = alignment.detach()
        # what is reported per cell and per epoch is not differentiated
        with torch.no_grad():
            kl = kl_shared + kl_private
            if not torch.isfinite(loss):
                self._raise_non_finite(reconstruction, kl, extra_metrics)
            if not self.training:
                # validation (and evaluation) only: "cross_modal_nll_validation" in model.history, a diagnostic
                extra_metrics["cross_modal_nll"] = self.cross_modal_nll(tensors, inference_outputs).mean()
            reconstruction_per_cell = {
                f"reconstruction_{name}": (weights * reconstruction[m]).sum(dim=1)
                for m, name in enumerate(self.modalities)
            }
            # each modality's reconstruction term per epoch in model.history ("reconstruction_<modality>_train")
            extra_metrics.update({key: value.mean() for key, value in reconstruction_per_cell.items()})
            kl_local = {"kl": (weights * kl).sum(dim=1)}
        return LossOutput(
            loss=loss, reconstruction_loss=reconstruction_per_cell, kl_local=kl_local, extra_metrics=extra_metrics
        )

    @staticmethod
    def alignment_penalty(qz_shared: list[Normal], presence: torch.Tensor) -> torch.Tensor:
        """``(n,)`` Jeffreys divergence between the experts' ``z_shared`` posteriors, summed over observed pairs."""
        penalties = []
        for j in range(len(qz_shared)):
            for k in range(j + 1, len(qz_shared)):
                jeffreys = jeffreys_divergence(
                    qz_shared[j].loc, qz_shared[j].scale, qz_shared[k].loc, qz_shared[k].scale
                )
                penalties.append(torch.where(presence[:, j] & presence[:, k], jeffreys, 0.0))
        if not penalties:
            return torch.zeros(presence.shape[0], device=presence.device)
        return functools.reduce(torch.add, penalties)

    def _raise_non_finite(self, reconstruction: list[torch.Tensor], kl: torch.Tensor, extra_metrics: dict) -> None:
        parts = {f"reconstruction of {name!r}": reconstruction[m] for m, name in enumerate(self.modalities)}
        parts["KL"] = kl
        parts.update(extra_metrics)
        broken = [name for name, value in parts.items() if not torch.isfinite(value).all()]
        raise FloatingPointError(
            f"the training loss became non-finite in: {', '.join(broken) or 'the total'}; check the input data of "
            "these modalities (scale, outliers), lower the learning rate, or use a count likelihood for counts"
        )

    def reconstruction_per_term(
        self, tensors: dict[str, torch.Tensor], presence: torch.Tensor, generative_outputs: dict
    ) -> list[torch.Tensor]:
        """Negative log-likelihood of each modality under each term, one ``(n, T)`` tensor per modality.

        Entry ``[i, t]`` of modality ``m`` is ``-log p(x_m | z)`` for cell ``i`` with the latent of term ``t``;
        it is 0 where term ``t`` does not decode ``m`` or cell ``i`` lacks ``m``.
        """
        n_obs, n_terms = presence.shape[0], len(self.objective.terms)
        reconstruction = []
        for m in range(self.n_modalities):
            params = generative_outputs["params"][m]
            if params is None:
                reconstruction.append(torch.zeros(n_obs, n_terms, device=presence.device))
                continue
            terms = generative_outputs["stacked_terms"][m]
            # parameters (n_terms * n, features) viewed as (n_terms, n, features) broadcast against x
            per_sample = {key: value.view(len(terms), n_obs, -1) for key, value in params.items()}
            log_lik = self.minibatch_log_likelihood(m, tensors, per_sample).T  # (n, len(terms))
            observed_nll = torch.where(presence[:, m : m + 1], -log_lik, 0.0)
            if terms == list(range(n_terms)):  # every term decodes m (MMVAE++, MMVAE, MoPoE-VAE, MVAE)
                reconstruction.append(observed_nll)
            else:
                per_term = torch.zeros(n_obs, n_terms, device=presence.device)
                per_term[:, terms] = observed_nll
                reconstruction.append(per_term)
        return reconstruction

    def minibatch_log_likelihood(
        self, m: int, tensors: dict[str, torch.Tensor], params: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Modality ``m``'s log-likelihood of the minibatch's data under ``params``, summed over features.

        The positions of the data's non-zero entries come with the minibatch where the data loader knows them.
        """
        key = data_key(self.modalities[m])
        return self.decoders[m].likelihood.log_likelihood(tensors[key], params, tensors.get(nonzero_key(key)))

    def cross_modal_nll(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> torch.Tensor:
        """``(n,)`` negative log-likelihood of each cell's modalities predicted from the other modalities.

        For every observed target modality and every other observed source modality:
        ``-log p(x_target | z)`` with ``z_shared`` the posterior mean from the source alone and the target's
        private block at its prior mean 0 (what :meth:`predict_target` uses), averaged over the sources and
        summed over the targets; 0 for cells with a single modality. The same for every objective, so it
        measures what ``z_shared`` carries across modalities, not the training objective.
        """
        presence = inference_outputs["presence"]
        generative_input = self._get_generative_input(tensors, inference_outputs)
        nll_sum = torch.zeros(presence.shape, device=presence.device)  # (n, M): summed over sources, per target
        n_sources = torch.zeros_like(nll_sum)
        for j in range(self.n_modalities):
            observed_source = torch.zeros_like(presence)
            observed_source[:, j] = presence[:, j]
            if not observed_source.any():
                continue
            z_shared = self.shared_posterior_mean(inference_outputs["qz_shared"], observed_source)
            for m in range(self.n_modalities):
                pair = presence[:, j] & presence[:, m]
                if m == j or not pair.any():
                    continue
                params = self._decode_target(
                    z_shared,
                    inference_outputs,
                    observed_source,
                    m,
                    generative_input["library"][m],
                    generative_input["categorical"],
                )
                nll = -self.minibatch_log_likelihood(m, tensors, params)
                nll_sum[:, m] += torch.where(pair, nll, torch.zeros_like(nll))
                n_sources[:, m] += pair.to(nll_sum.dtype)
        return (nll_sum / n_sources.clamp(min=1.0)).sum(dim=1)

    def _decode_target(
        self,
        z_shared: torch.Tensor,
        inference_outputs: dict,
        observed_sources: torch.Tensor,
        target: int,
        library: torch.Tensor,
        categorical: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters of modality ``target`` decoded from ``z_shared``.

        The target's private block is its posterior mean where the target is among ``observed_sources``
        (``(n, M)`` bool), otherwise its prior mean 0 with the cross-modal (marginal) dispersion.
        """
        private_mean = inference_outputs["qz_private"][target].loc
        use_private = observed_sources[:, target : target + 1]
        z_private = torch.where(use_private, private_mean, torch.zeros_like(private_mean))
        return self.decoders[target](torch.cat([z_shared, z_private], dim=1), library, ~use_private, *categorical)

    def _label_loss(self, labels: torch.Tensor, z_shared: list[torch.Tensor]) -> torch.Tensor:
        """``(n, T)`` cross-entropy of the label decoded from each term's ``z_shared``; 0 for unlabelled cells."""
        labels = labels.long().view(-1)
        labelled = labels < self.n_labels
        target = torch.where(labelled, labels, torch.zeros_like(labels))
        losses = [
            F.cross_entropy(self.classifier(z), target, reduction="none") * labelled.to(z.dtype) for z in z_shared
        ]
        return torch.stack(losses, dim=1)

    # ------------------------------------------------------------------ prediction
    @torch.inference_mode()
    @auto_move_data
    def predict_target(
        self,
        tensors: dict[str, torch.Tensor],
        sources: list[int],
        target: int,
        library: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Expected value of modality ``target`` given only the modalities ``sources``.

        ``z_shared`` is the posterior mean from the sources; the target's private block is its posterior
        mean when the target is itself a source and observed, otherwise its prior mean 0. ``library``
        (``(n, 1)``) overrides the target's per-cell scale (default :meth:`cell_library`).
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        presence = inference_outputs["presence"]
        if library is None:
            library = self.cell_library(
                target, tensors[data_key(self.modalities[target])], presence[:, target : target + 1]
            )
        observed_sources = self.observed_sources(presence, sources)
        z_shared = self.shared_posterior_mean(inference_outputs["qz_shared"], observed_sources)
        params = self._decode_target(
            z_shared, inference_outputs, observed_sources, target, library, self._categorical(tensors)
        )
        return self.decoders[target].likelihood.expected_value(params)

    @torch.inference_mode()
    @auto_move_data
    def predict_labels(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class probabilities of the label head at the joint posterior mean of ``z_shared``."""
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        z_shared = self.shared_posterior_mean(inference_outputs["qz_shared"], inference_outputs["presence"])
        return torch.softmax(self.classifier(z_shared), dim=-1)

    # ------------------------------------------------------------------ sampling: denoised values, marginal likelihood
    def sample_shared_posterior(self, qz_shared: list[Normal], presence: torch.Tensor, n_samples: int) -> torch.Tensor:
        """``(n_samples, n, n_shared)`` draws from the joint posterior of ``z_shared``; ``NaN`` for cells without any."""
        valid, loc, variance = self._shared_posterior_components(qz_shared, presence)
        scale = variance.sqrt()
        has_component = valid.any(dim=1, keepdim=True)
        weights = torch.where(has_component, valid, torch.ones_like(valid)).to(loc.dtype)
        component = torch.multinomial(weights, n_samples, replacement=True).T  # (n_samples, n)
        cells = torch.arange(loc.shape[1], device=loc.device)
        chosen_loc = loc[component, cells]
        z = chosen_loc + scale[component, cells] * torch.randn_like(chosen_loc)
        return torch.where(has_component, z, torch.full_like(z, float("nan")))

    def shared_posterior_log_prob(
        self, qz_shared: list[Normal], presence: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """``(n_samples, n)`` log density of ``z`` (``(n_samples, n, n_shared)``) under the joint posterior."""
        valid, loc, variance = self._shared_posterior_components(qz_shared, presence)
        log_prob = (
            Normal(loc.unsqueeze(1), variance.sqrt().unsqueeze(1)).log_prob(z.unsqueeze(0)).sum(-1)
        )  # (C, n_samples, n)
        log_prob = torch.where(valid.T.unsqueeze(1), log_prob, torch.full_like(log_prob, float("-inf")))
        return torch.logsumexp(log_prob, dim=0) - torch.log(valid.sum(dim=1).to(log_prob.dtype))

    def _decode_samples(
        self,
        target: int,
        z_shared: torch.Tensor,
        z_private: torch.Tensor,
        marginal: torch.Tensor,
        library: torch.Tensor,
        categorical: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters ``(n_samples, n, features)`` of ``target`` for latents ``(n_samples, n, .)``."""
        n_samples, n_obs = z_shared.shape[:2]
        z = torch.cat([z_shared, z_private], dim=-1).reshape(n_samples * n_obs, -1)
        params = self.decoders[target](
            z,
            library.repeat(n_samples, 1),
            marginal.repeat(n_samples, 1),
            *(c.repeat(n_samples, 1) for c in categorical),
        )
        return {key: value.reshape(n_samples, n_obs, -1) for key, value in params.items()}

    @torch.inference_mode()
    @auto_move_data
    def sample_target_params(
        self,
        tensors: dict[str, torch.Tensor],
        sources: list[int],
        target: int,
        n_samples: int = 1,
        library: torch.Tensor | None = None,
        batch: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters of modality ``target``, ``(n_samples, n, features)``, at posterior draws of the latents.

        ``z_shared`` is drawn from the joint posterior given the cell's observed modalities among ``sources``
        (``NaN`` rows for cells with none of them). The target's private block is drawn from its posterior where
        the target is observed and among the sources; otherwise it is at its prior mean 0 with the cross-modal
        dispersion, as in :meth:`predict_target`. ``library`` (``(n, 1)``) overrides the target's per-cell scale
        (default :meth:`cell_library`); ``batch`` decodes every cell as if it came from that batch (code).
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        presence = inference_outputs["presence"]
        observed_sources = self.observed_sources(presence, sources)
        z_shared = self.sample_shared_posterior(inference_outputs["qz_shared"], observed_sources, n_samples)
        use_private = observed_sources[:, target : target + 1]
        private_sample = inference_outputs["qz_private"][target].sample((n_samples,))
        z_private = torch.where(use_private, private_sample, torch.zeros_like(private_sample))
        if library is None:
            library = self.cell_library(
                target, tensors[data_key(self.modalities[target])], presence[:, target : target + 1]
            )
        categorical = self._categorical(tensors)
        if batch is not None:
            categorical[0] = torch.full_like(categorical[0], batch)
        return self._decode_samples(target, z_shared, z_private, ~use_private, library, categorical)

    @torch.inference_mode()
    @auto_move_data
    def marginal_ll(
        self,
        tensors: dict[str, torch.Tensor],
        n_mc_samples: int = 1000,
        return_mean: bool = False,
        n_mc_samples_per_pass: int = 100,
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` of each cell's observed modalities, ``(n,)`` (or its mean).

        The generative model: ``z_shared`` and every private block standard normal, each observed modality
        ``m`` drawn from ``p(x_m | z_shared, z_private_m)`` (the conditional dispersion). The proposal is the
        joint posterior of ``z_shared`` (the uniform mixture of the objective's valid components) times the
        private posteriors of the observed modalities; a missing modality and its private block integrate out.
        ``log p(x) ~ logsumexp_k(log w_k) - log K`` with ``K = n_mc_samples`` and
        ``w = p(x | z) p(z) / q(z | x)``, a lower bound in expectation that tightens as ``K`` grows.
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        qz_shared, qz_private = inference_outputs["qz_shared"], inference_outputs["qz_private"]
        presence = inference_outputs["presence"]
        x = [tensors[data_key(name)] for name in self.modalities]
        library = [self.cell_library(m, x[m], presence[:, m : m + 1]) for m in range(self.n_modalities)]
        categorical = self._categorical(tensors)
        conditional = torch.zeros_like(presence[:, :1])
        log_weights = []
        for start in range(0, n_mc_samples, n_mc_samples_per_pass):
            n_samples = min(n_mc_samples_per_pass, n_mc_samples - start)
            z_shared = self.sample_shared_posterior(qz_shared, presence, n_samples)
            log_w = Normal(0.0, 1.0).log_prob(z_shared).sum(-1) - self.shared_posterior_log_prob(
                qz_shared, presence, z_shared
            )
            for m in range(self.n_modalities):
                z_private = qz_private[m].sample((n_samples,))
                params = self._decode_samples(m, z_shared, z_private, conditional, library[m], categorical)
                log_w_m = (
                    self.minibatch_log_likelihood(m, tensors, params)
                    + Normal(0.0, 1.0).log_prob(z_private).sum(-1)
                    - qz_private[m].log_prob(z_private).sum(-1)
                )
                log_w = log_w + torch.where(presence[:, m], log_w_m, torch.zeros_like(log_w_m))
            log_weights.append(log_w)
        log_px = torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(n_mc_samples)
        return log_px.mean() if return_mean else log_px
