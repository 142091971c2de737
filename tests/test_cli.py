"""`python -m smoothloss check`: the table, and exit status 1 on a failure."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

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
