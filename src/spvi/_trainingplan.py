"""The Lightning training plan of spvi: scvi-tools' plan with metrics logged in a DDP-safe way."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan


class SPVITrainingPlan(TrainingPlan):
    """:class:`scvi.train.TrainingPlan` that logs its metrics under ``no_grad`` instead of ``inference_mode``.

    scvi-tools 1.4 logs the loss metrics inside ``torch.inference_mode``. With a distributed strategy
    (``strategy="ddp"``) Lightning then synchronises the running batch count of each per-epoch metric in
    place, which PyTorch forbids for tensors made in inference mode (``RuntimeError: Inplace update to
    inference tensor outside InferenceMode``). Logging under ``no_grad`` gives the same values without that
    restriction.
    """

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """Log the ELBO metrics and the module's extra metrics (see :class:`scvi.train.TrainingPlan`)."""
        with torch.no_grad():
            TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)
