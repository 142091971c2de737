"""`python -m smoothloss check`: the table, and exit status 1 on a failure."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import smoothloss.__main__ as cli


def test_check_passes_and_prints_a_table():
    out = subprocess.run(
        [sys.executable, "-m", "smoothloss", "check", "--frameworks", "numpy,array_api_strict"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "framework" in out.stdout and "grad err" in out.stdout
    assert out.stdout.count("PASS") >= 5  # progress lines and table rows
    assert "all PASS" in out.stdout


def test_check_fails_with_exit_1_when_a_result_is_wrong(monkeypatch):
    real = cli.reference_cross_entropy

    def off_by_a_bit(*args, **kwargs):
        loss, grad = real(*args, **kwargs)
        return loss * (1 + 1e-3), grad

    monkeypatch.setattr(cli, "reference_cross_entropy", off_by_a_bit)
    buf = io.StringIO()
    assert cli.check(frameworks=("numpy",), out=buf) == 1
    assert "FAIL" in buf.getvalue()


def test_check_cases_cover_every_option_set():
    names = {c.option_set for c in cli.check_cases("float32")}
    assert names == set(cli.OPTION_SETS)
    kinds = {c.targets for c in cli.check_cases("float64")}
    assert kinds == {"int", "prob"}
    assert np.any([c.K == 1000 for c in cli.check_cases("bfloat16")])


def test_check_leaves_jax_x64_as_the_user_set_it():
    """The float64 rows of ``check`` need JAX's x64 mode; the CLI switches it on for its
    own block only, so the process's setting is what it was before (here: off)."""
    pytest.importorskip("jax")
    script = (
        "import io, jax, smoothloss.__main__ as cli\n"
        "assert not jax.config.jax_enable_x64\n"
        "code = cli.check(frameworks=('jax',), out=io.StringIO())\n"
        "assert code == 0, code\n"
        "assert not jax.config.jax_enable_x64, 'check switched x64 on for the whole process'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


# -- the command line tells the truth ------------------------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoothloss", *args], capture_output=True, text=True, env=env)


def test_check_on_a_missing_device_prints_one_line_naming_the_devices_found():
    """``check --device cuda`` where no framework has CUDA: exit status not 0 and one line,
    stdout and stderr together, that says what each framework has; no table, no rows
    run elsewhere, and none of TensorFlow's or absl's start-up lines."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own quieting, not the caller's
    env["CUDA_VISIBLE_DEVICES"] = ""  # no CUDA device here, whatever the machine has
    env["JAX_PLATFORMS"] = "cpu"
    out = _cli("check", "--device", "cuda", env=env)
    text = out.stdout + out.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert out.returncode != 0, text
    assert len(lines) == 1, text
    assert lines[0].startswith("no cuda device: "), text
    installed = [f for f in ("torch", "jax", "tensorflow") if importlib.util.find_spec(f)] or ["numpy"]
    for framework in installed:
        assert f"{framework} has cpu" in lines[0], text


def test_check_rows_name_the_device_the_arrays_were_on(monkeypatch):
    """A driver that says it has a device but puts its arrays on the CPU (what tf.device
    does when the GPU is missing) gets rows that say cpu, and fails."""
    from smoothloss.testing.drivers import NumpyDriver

    monkeypatch.setattr(NumpyDriver, "devices", lambda self: ["cpu", "cuda"])
    buf = io.StringIO()
    assert cli.check(device="cuda", frameworks=("numpy",), out=buf) == 1
    text = buf.getvalue()
    rows = [line.split() for line in text.splitlines() if line.startswith(("numpy", "[check] numpy"))]
    assert rows, text
    assert all("cuda" not in row[:3] for row in rows), text
    assert all(row[1 if row[0] == "numpy" else 2] == "cpu" for row in rows), text
    assert "ran on cpu, not on cuda" in text


def test_tensorflow_driver_refuses_a_missing_gpu():
    """tf.device('/GPU:0') without a GPU places on the CPU without a word; the driver's
    device check says no before anything runs."""
    tf = pytest.importorskip("tensorflow")
    from smoothloss.testing.drivers import get_driver

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    driver = get_driver("tensorflow", "cuda")
    assert driver.devices() == ["cpu"]
    with pytest.raises(RuntimeError, match="no cuda device"):
        driver.require_device()
    assert cli._device_label(driver.device_of(driver.asarray(np.ones(3)))) == "cpu"  # the silent fallback


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("cpu", "cpu"),
        ("cuda:0", "cuda"),
        ("/job:localhost/replica:0/task:0/device:GPU:1", "cuda"),
        ("/job:localhost/replica:0/task:0/device:CPU:0", "cpu"),
        ("array_api_strict.Device('CPU_DEVICE')", "cpu"),
        ("gpu", "cuda"),
    ],
)
def test_device_labels(raw, label):
    assert cli._device_label(raw) == label


def test_unknown_framework_is_a_usage_error_listing_the_valid_names():
    out = _cli("check", "--frameworks", "pytorch")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "KeyError" not in out.stderr
    assert "'pytorch'" in out.stderr and "did you mean 'torch'" in out.stderr
    from smoothloss.testing.drivers import DRIVERS

    valid = out.stderr.split("valid names:", 1)[1]
    assert all(name in valid for name in DRIVERS), out.stderr


@pytest.mark.parametrize("args", [(), ("check",), ("bench",)])
def test_help_is_plain_text(args):
    out = _cli(*args, "--help")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("usage: python -m smoothloss")
    assert "``" not in out.stdout + out.stderr
