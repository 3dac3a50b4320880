"""Train spvi with Lightning's DDP strategy on CPU processes (gloo); run by tests/test_ddp.py.

Usage: python ddp_train.py OUTPUT_JSON. Lightning starts the second process by re-running this script;
rank 0 writes the world size, the training losses and the latent shape to OUTPUT_JSON.
"""

import json
import sys

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scvi

import spvi


def main(output: str) -> None:
    md.set_options(pull_on_update=False)
    rng = np.random.default_rng(0)
    n_obs = 256
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_obs)])
    shared = rng.normal(size=(n_obs, 2))
    counts = rng.poisson(np.exp(shared @ rng.normal(size=(2, 30)) * 0.5 + 1)).astype(np.float32)
    values = (shared @ rng.normal(size=(2, 12)) + rng.normal(size=(n_obs, 12))).astype(np.float32)
    mdata = md.MuData(
        {
            "rna": ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(30)])),
            "prot": ad.AnnData(values, obs=obs, var=pd.DataFrame(index=[f"p{j}" for j in range(12)])),
        }
    )
    scvi.settings.seed = 0
    spvi.SPVI.setup_mudata(mdata)
    model = spvi.SPVI(mdata, n_shared=2, n_private=2, n_hidden=16)
    model.train(
        max_epochs=3,
        batch_size=32,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        enable_progress_bar=False,
    )
    if model.trainer.global_rank == 0:
        latent = model.get_latent_representation()
        result = {
            "world_size": model.trainer.world_size,
            "batches_per_process": model.trainer.num_training_batches,
            "train_loss": model.history["train_loss"].to_numpy(dtype=float).ravel().tolist(),
            "latent_shape": list(latent.shape),
            "latent_finite": bool(np.isfinite(latent).all()),
        }
        with open(output, "w") as file:
            json.dump(result, file)


if __name__ == "__main__":
    main(sys.argv[1])
