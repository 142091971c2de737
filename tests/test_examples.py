"""The runnable examples in ``examples/`` run, one subprocess and test id per framework.

``examples/mixup_training.py FRAMEWORK`` trains for a few steps with ``smoothloss.Mixup``
and label smoothing, prints the losses, and exits 1 unless training lowered the loss on
the unmixed data. A framework that is not installed skips its id.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIXUP_TRAINING = REPO / "examples" / "mixup_training.py"


@pytest.mark.parametrize("framework", ["jax", "keras", "torch"])
def test_mixup_training_example_runs(framework):
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(MIXUP_TRAINING), framework],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(f"[{framework}")]
    assert len(lines) == 2 and "train loss" in lines[0] and "accuracy" in lines[1], proc.stdout


def test_mixup_training_example_rejects_unknown_frameworks():
    proc = subprocess.run(
        [sys.executable, str(MIXUP_TRAINING), "mxnet"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 2 and "mxnet" in proc.stderr
