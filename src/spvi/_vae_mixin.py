"""Model scores: the objective's ELBO, reconstruction error per modality, marginal log-likelihood (scvi's VAEMixin)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from mudata import MuData
from scvi.module.base import LossOutput

from spvi._constants import PRESENCE_KEY
from spvi._data import data_argument


class VAEMixin:
    """Scores of a trained model on data, with scvi-tools' names and return conventions.

    Mixed into :class:`spvi.SPVI`. Higher is better for :meth:`get_elbo` and :meth:`get_marginal_ll`;
    :meth:`get_reconstruction_error` returns negative log-likelihoods (lower is better), as scvi-tools does.
    """

    def _losses(
        self, mdata: MuData | None, indices: Sequence[int] | None, batch_size: int | None
    ) -> Iterator[tuple[dict[str, torch.Tensor], LossOutput]]:
        """Each minibatch and its loss terms at KL weight 1 (evaluation mode)."""
        for tensors in self._minibatches(mdata, indices, batch_size):
            _, _, losses = self.module(tensors, loss_kwargs={"kl_weight": 1.0})
            yield tensors, losses

    @torch.inference_mode()
    def get_elbo(
        self,
        mdata: MuData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        adata: MuData | None = None,
    ) -> float | torch.Tensor:
        """The evidence lower bound of the training objective (higher is better).

        Per cell, minus the sum of the objective's reconstruction terms and KL divergences at KL weight 1, the
        quantity whose mean ``model.history["elbo_train"]`` and ``["elbo_validation"]`` report with the opposite
        sign; the label and alignment terms are not part of it. For MMVAE++, MMVAE and MoPoE-VAE it is the
        mixture-of-experts bound: the average over the cell's valid terms, where a cross-modal term scores its
        target with the private block at the prior mean (and the cross-modal dispersion), a stand-in for the
        target's marginal over that block. For MVAE it is the sum of the joint and the unimodal bounds, which is
        not a bound on one log-likelihood. :meth:`get_marginal_ll` estimates the log-likelihood itself.

        Parameters
        ----------
        mdata
            MuData (default: the training data).
        indices
            Cells (positions); default all.
        batch_size
            Minibatch size.
        return_mean
            Return the mean over cells; otherwise a tensor with one value per cell.
        adata
            Alias of ``mdata`` (scvi-tools' name); pass one of the two.
        """
        mdata = data_argument(mdata, adata)
        elbo = torch.cat(
            [
                -(torch.stack(list(losses.reconstruction_loss.values())).sum(dim=0) + losses.kl_local["kl"]).cpu()
                for _, losses in self._losses(mdata, indices, batch_size)
            ]
        )
        return elbo.mean().item() if return_mean else elbo

    @torch.inference_mode()
    def get_reconstruction_error(
        self,
        mdata: MuData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        adata: MuData | None = None,
    ) -> dict[str, float | torch.Tensor]:
        """The objective's reconstruction term of each modality: a negative log-likelihood (lower is better).

        Per cell, the objective's weighted sum over its terms of ``-log p(x_m | z)`` at one posterior draw (for
        MMVAE++ the average of the self- and the cross-modal reconstructions of ``x_m``), what
        ``model.history["reconstruction_<modality>_train"]`` reports. Cells that lack a modality have no term
        for it: they are left out of its mean and are ``NaN`` with ``return_mean=False``.

        Parameters
        ----------
        mdata
            MuData (default: the training data).
        indices
            Cells (positions); default all.
        batch_size
            Minibatch size.
        return_mean
            Return the mean over the cells that have each modality; otherwise a tensor with one value per cell.
        adata
            Alias of ``mdata`` (scvi-tools' name); pass one of the two.

        Returns
        -------
        ``{"reconstruction_<modality>": value}`` for every modality (the keys of the module's ``LossOutput``).
        """
        mdata = data_argument(mdata, adata)
        per_cell: dict[str, list[torch.Tensor]] = {}
        for tensors, losses in self._losses(mdata, indices, batch_size):
            present = tensors[PRESENCE_KEY].bool().cpu()
            for m, (key, value) in enumerate(losses.reconstruction_loss.items()):
                value = value.cpu()
                per_cell.setdefault(key, []).append(
                    torch.where(present[:, m], value, torch.full_like(value, torch.nan))
                )
        errors = {key: torch.cat(values) for key, values in per_cell.items()}
        return {key: value.nanmean().item() for key, value in errors.items()} if return_mean else errors

    @torch.inference_mode()
    def get_marginal_ll(
        self,
        mdata: MuData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
        n_mc_samples_per_pass: int = 100,
        adata: MuData | None = None,
    ) -> float | torch.Tensor:
        """Importance-sampled log-likelihood of each cell's observed modalities (higher is better).

        ``log p(x)`` under the generative model (standard normal ``z_shared`` and private blocks, each observed
        modality from its decoder with its own private block), estimated with ``n_mc_samples`` draws from the
        objective's joint posterior of ``z_shared`` and the private posteriors as proposal (see
        :meth:`spvi.SPVAE.marginal_ll`). A lower bound in expectation that tightens with ``n_mc_samples``.

        Parameters
        ----------
        mdata
            MuData (default: the training data).
        indices
            Cells (positions); default all.
        n_mc_samples
            Number of importance samples per cell.
        batch_size
            Minibatch size.
        return_mean
            Return the mean over cells; otherwise a tensor with one value per cell.
        n_mc_samples_per_pass
            Samples decoded at once (memory: ``n_mc_samples_per_pass x batch_size x n_features`` per modality).
        adata
            Alias of ``mdata`` (scvi-tools' name); pass one of the two.
        """
        mdata = data_argument(mdata, adata)
        if not isinstance(n_mc_samples, int) or n_mc_samples < 1:
            raise ValueError(f"n_mc_samples must be a positive int, got {n_mc_samples!r}")
        log_px = torch.cat(
            [
                self.module.marginal_ll(tensors, n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass).cpu()
                for tensors in self._minibatches(mdata, indices, batch_size)
            ]
        )
        return log_px.mean().item() if return_mean else log_px
