"""What a user sees: no mudata FutureWarnings from spvi's calls, no start-up lines, warnings that name features."""

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import mudata as md
import numpy as np
import pytest
from mudata._core.config import OPTIONS

import spvi

TRAIN_KWARGS = {"enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False}
QUIET = (
    "already downloaded",
    "GPU available",
    "TPU available",
    "HPU available",
    "LOCAL_RANK",
    "Generating sequential",
    "Input AnnData not setup",
)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _captured_logs():
    """Every record of the root, scvi and Lightning loggers (the last two do not propagate to the root)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("", "scvi", "lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_a_session_shows_no_future_warnings_and_no_startup_lines(tmp_path):
    new_data = spvi.datasets.pbmc_cite_mosaic()[:100].copy()  # RNA-only cells: new data without protein
    with md.set_options(pull_on_update=None):  # mudata's default (the test suite sets False)
        with _captured_logs() as messages, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mdata = spvi.datasets.pbmc_cite_mosaic()
            spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "protein": "counts"}, batch_key="batch")
            model = spvi.SPVI(mdata, n_shared=3, n_private=2, n_hidden=16)
            model.train(max_epochs=1, **TRAIN_KWARGS)
            model.get_latent_representation(new_data)  # new data: registered again
            model.save(tmp_path / "model", save_mudata=True)
            spvi.SPVI.load(tmp_path / "model")
            spvi.SPVI.load(tmp_path / "model", mdata=mdata)
        assert OPTIONS["pull_on_update"] is None  # the user's option is left as it was
    # none from mudata (options, mod_names) nor torch's deprecation of a class Lightning uses in training
    future_warnings = [f"{w.filename}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]
    assert future_warnings == []
    assert not [m for m in messages if m.startswith(QUIET) or any(q in m for q in QUIET)]
    assert not [m for m in messages if "MuData options" in m]


def test_startup_lines_come_back_with_the_spvi_logger_at_debug(cite_path):
    mdata = md.read_h5mu(cite_path)
    spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "protein": "counts"})
    model = spvi.SPVI(mdata, n_shared=3, n_private=2, n_hidden=16)
    spvi_logger = logging.getLogger("spvi")
    level = spvi_logger.level
    spvi_logger.setLevel(logging.DEBUG)
    try:
        with _captured_logs() as messages:
            model.train(max_epochs=1, **TRAIN_KWARGS)
    finally:
        spvi_logger.setLevel(level)
    assert any(m.startswith("GPU available") for m in messages)
    assert any(m.startswith("TPU available") for m in messages)
    with _captured_logs() as messages:
        model.train(max_epochs=1, **TRAIN_KWARGS)
    assert not any(m.startswith(("GPU available", "TPU available")) for m in messages)
    # the filters are gone after training: Lightning used directly is not affected
    assert not logging.getLogger("lightning.pytorch.utilities.rank_zero").filters


def test_constant_feature_warning_names_features_points_at_the_call_and_is_not_repeated(multiome_path, tmp_path):
    mdata = md.read_h5mu(multiome_path)
    counts = mdata["rna"].layers["counts"].toarray()
    counts[:, [3, 7]] = 2.0
    mdata["rna"].layers["counts"] = counts
    names = mdata["rna"].var_names[[3, 7]].tolist()
    with pytest.warns(UserWarning, match=r"modality 'rna', layer 'counts' has 2 constant features") as record:
        spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "atac": "counts"})
    (warning,) = [w for w in record if "modality 'rna'" in str(w.message)]
    assert str(names) in str(warning.message)
    assert Path(warning.filename) == Path(__file__)  # the user's line, not spvi's internals

    model = spvi.SPVI(mdata, n_shared=2, n_private=2, n_hidden=16)
    model.train(max_epochs=1, **TRAIN_KWARGS)
    model.save(tmp_path / "model")
    new_data, reloaded_data = mdata[:50].copy(), mdata.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.get_latent_representation(new_data)
        loaded = spvi.SPVI.load(tmp_path / "model", mdata=reloaded_data)
    assert not [w for w in caught if "constant" in str(w.message)]
    assert np.isfinite(loaded.get_latent_representation()).all()


def test_small_data_train_without_lightning_logging_interval_warning():
    # 1,600 cells at batch 512: 4 minibatches per epoch, fewer than Lightning's default logging interval of 10
    mdata = spvi.datasets.pbmc_cite_mosaic()
    spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "protein": "counts"})
    model = spvi.SPVI(mdata, n_shared=3, n_private=2, n_hidden=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=2, batch_size=512, **TRAIN_KWARGS)
    assert not [str(w.message) for w in caught if "log_every_n_steps" in str(w.message)]
    assert len(model.history["elbo_train"]) == 2  # per-epoch metrics are still logged


def test_two_models_embed_the_same_new_data_without_scvi_transfer_lines():
    # the second model meets new data that the first one has already padded and registered
    mdata = spvi.datasets.pbmc_cite_mosaic()
    new_data = mdata[:200].copy()
    spvi.SPVI.setup_mudata(mdata, layers={"rna": "counts", "protein": "counts"})
    models = [spvi.SPVI(mdata, n_shared=n_shared, n_private=2, n_hidden=16) for n_shared in (2, 3)]
    with _captured_logs() as messages:
        latents = [model.get_latent_representation(new_data) for model in models]
    assert [z.shape for z in latents] == [(200, 2), (200, 3)]
    assert not [m for m in messages if any(q in m for q in QUIET)]
