"""Persistence under faults: a save killed or failing mid-way, and resuming training from a checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import mudata as md
import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

import spvi

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_model_summary": False}
SETUP = {"layers": {"rna": "counts", "atac": "counts"}, "likelihoods": {"atac": "bernoulli"}}


def _model(multiome_path) -> spvi.SPVI:
    mdata = md.read_h5mu(multiome_path)
    spvi.SPVI.setup_mudata(mdata, **SETUP)
    scvi.settings.seed = 0
    return spvi.SPVI(mdata, n_shared=3, n_private=2, n_hidden=16)


# Loads the saved model, retrains it and saves it over the old one; torch.save writes half of the file, signals
# the test and hangs, so the test can kill the process while the save is under way.
_SAVER = textwrap.dedent(
    """
    import io, sys, time
    import mudata as md, torch, spvi

    model_dir, data_path, signal_path = sys.argv[1:]
    real_save = torch.save

    def hanging_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as handle:
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        open(signal_path, "w").close()
        time.sleep(600)

    torch.save = hanging_save
    mdata = md.read_h5mu(data_path)
    model = spvi.SPVI.load(model_dir, mdata=mdata)
    model.train(max_epochs=1, enable_progress_bar=False, enable_checkpointing=False)
    model.save(model_dir, overwrite=True)
    """
)


def test_a_save_killed_mid_way_leaves_the_previous_model(multiome_path, tmp_path):
    model = _model(multiome_path)
    model.train(max_epochs=1, enable_checkpointing=False, **TRAIN_KWARGS)
    model_dir, started = tmp_path / "model", tmp_path / "save_started"
    model.save(model_dir)
    z = model.get_latent_representation()

    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, script, model_dir, multiome_path, started], env=env)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert process.poll() is None, "the saving process ended before it started saving"
            assert time.monotonic() < deadline, "the saving process did not start saving within 120 s"
            time.sleep(0.1)
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".spvi-save-")]
        assert len(staging) == 1  # the new model is being written beside the old one ...
        assert (staging[0] / "model.pt").stat().st_size > 0  # ... and is half written
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL

    loaded = spvi.SPVI.load(model_dir, mdata=md.read_h5mu(multiome_path))
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)


def test_a_failing_save_leaves_the_previous_model_and_no_files(multiome_path, tmp_path, monkeypatch):
    model = _model(multiome_path)
    model.train(max_epochs=1, enable_checkpointing=False, **TRAIN_KWARGS)
    model.save(tmp_path / "model")
    z = model.get_latent_representation()
    model.train(max_epochs=1, enable_checkpointing=False, **TRAIN_KWARGS)

    def failing_save(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        model.save(tmp_path / "model", overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    loaded = spvi.SPVI.load(tmp_path / "model", mdata=model.mdata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    model.save(tmp_path / "model", overwrite=True)  # and a save that completes replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    replaced = spvi.SPVI.load(tmp_path / "model", mdata=model.mdata)
    np.testing.assert_array_equal(replaced.get_latent_representation(), model.get_latent_representation())


class _StopAfter(Callback):
    """Stops training after ``n_epochs`` epochs, as if the process had been killed there."""

    def __init__(self, n_epochs: int):
        self.n_epochs = n_epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.n_epochs:
            trainer.should_stop = True


def test_resuming_from_a_checkpoint_reproduces_an_uninterrupted_run(multiome_path, tmp_path, monkeypatch):
    monkeypatch.setattr(scvi.settings, "logging_dir", tmp_path / "scvi_log")
    kwargs = TRAIN_KWARGS | {"max_epochs": 4, "train_size": 0.9, "enable_checkpointing": True}

    uninterrupted = _model(multiome_path)
    uninterrupted.train(callbacks=[ModelCheckpoint(dirpath=tmp_path / "a", save_last=True)], **kwargs)

    interrupted = _model(multiome_path)
    interrupted.train(callbacks=[ModelCheckpoint(dirpath=tmp_path / "b", save_last=True), _StopAfter(2)], **kwargs)
    assert len(interrupted.history["elbo_train"]) == 2

    resumed = _model(multiome_path)
    resumed.train(
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)],
        ckpt_path=str(tmp_path / "b" / "last.ckpt"),
        **kwargs,
    )
    assert len(resumed.history["elbo_train"]) == 2  # the history holds the resumed epochs 3 and 4
    np.testing.assert_array_equal(
        resumed.history["elbo_train"].to_numpy(), uninterrupted.history["elbo_train"].to_numpy()[2:]
    )
    for key, value in uninterrupted.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(resumed.get_latent_representation(), uninterrupted.get_latent_representation())
