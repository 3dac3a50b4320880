"""Multi-process training through Lightning's DDP strategy (2 CPU processes, gloo backend)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def test_two_process_ddp_training_on_cpu(tmp_path):
    output = tmp_path / "result.json"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(output)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["world_size"] == 2
    # 230 training cells, batch size 32: each process sees half of the 8 minibatches of an epoch
    assert result["batches_per_process"] == 4
    assert len(result["train_loss"]) == 3
    assert np.isfinite(result["train_loss"]).all()
    assert result["train_loss"][-1] < result["train_loss"][0]
    assert result["latent_shape"] == [256, 2]
    assert result["latent_finite"]
