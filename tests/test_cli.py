"""`python -m smoothloss check`: the table, and exit status 1 on a failure."""

from __future__ import annotations

import io
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
