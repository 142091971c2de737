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
    rows = [line.split() for line in text.splitlines()
            if line.startswith(("numpy", "[check] numpy")) and "looked for" not in line]
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


# -- check explains itself (issue 25) ---------------------------------------------------------

LEGEND = [
    "framework: jax-jit ran under jax.jit, tensorflow-function under tf.function, the others eagerly.",
    "loss err, grad err: largest relative error over the cases of the loss and of its gradient",
    "  against a float64 reference from the same rounded inputs; the gradient is the framework's",
    "  autodiff of the public loss (numpy, array_api_strict: the closed form). FAIL above tol.",
    "spread: largest relative difference of a case's loss between two rows of the same device and",
    "  dtype (each against the first; -: no other row). FAIL above 2 x tol.",
    "tol: the tolerance of the dtype: float32 1e-05, float64 1e-10, bfloat16 1e-02, float16 1e-02.",
    "cases: 26 in float32 and float64, 11 in bfloat16 and float16; check --list names them.",
]


def _check_text(**kwargs) -> tuple[int, str]:
    buf = io.StringIO()
    code = cli.check(out=buf, **kwargs)
    return code, buf.getvalue()


def _table_rows(text: str) -> list[list[str]]:
    """The table's rows, split: the lines between the dashes and the first blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    end = lines.index("", start)
    return [line.split() for line in lines[start:end] if not line.startswith(" ")]


def test_check_prints_a_legend_under_the_table():
    code, text = _check_text(frameworks=("numpy",))
    assert code == 0, text
    lines = text.splitlines()
    table_end = lines.index("", next(i for i, line in enumerate(lines) if line.startswith("---")))
    legend_at = lines.index(LEGEND[0])
    assert legend_at == table_end + 1, text
    assert lines[legend_at:legend_at + len(LEGEND)] == LEGEND, text
    assert lines[-1].startswith("3 rows in ") and lines[-1].endswith(": all PASS"), text


def test_check_names_each_frameworks_version_and_devices_before_the_progress_lines():
    code, text = _check_text(frameworks=("numpy",))
    lines = text.splitlines()
    assert lines[0] == f"[check] numpy {np.__version__}: looked for cpu; found cpu", text
    assert lines[1].startswith("[check] numpy ") and lines[1].endswith(" PASS"), text


def test_device_line_counts_jax_once_for_both_modes(monkeypatch):
    jax = pytest.importorskip("jax")
    monkeypatch.setattr(cli, "check_cases", lambda dtype: [c for c in _real_cases(dtype) if c.option_set == "ls"][:1])
    code, text = _check_text(frameworks=("jax", "jax-jit"))
    from smoothloss.testing.drivers import get_driver

    found = ", ".join(get_driver("jax").devices())
    head = [line for line in text.splitlines() if "looked for" in line]
    assert head == [f"[check] jax {jax.__version__}: looked for cpu, cuda, rocm, tpu; found {found}"], text


_real_cases = cli.check_cases


def test_rows_are_labelled_by_driver_so_jax_and_jax_jit_differ(monkeypatch):
    pytest.importorskip("jax")
    monkeypatch.setattr(cli, "check_cases", lambda dtype: [c for c in _real_cases(dtype) if c.option_set == "ls"][:1])
    code, text = _check_text(frameworks=("numpy", "jax", "jax-jit"))
    assert code == 0, text
    rows = _table_rows(text)
    labels = [row[0] for row in rows]
    assert labels == ["numpy"] * 3 + ["jax"] * 4 + ["jax-jit"] * 4, text  # numpy has no bfloat16
    progress = [line.split()[1] for line in text.splitlines() if line.startswith("[check]") and " cases " in line]
    assert progress == labels, text
    # the spread still compares across rows of one device and dtype: jax's float32 row
    # against numpy's, not "-" as if each label were alone
    assert all(row[5] != "-" for row in rows), text


def test_spread_groups_rows_of_different_labels_by_device_and_dtype(monkeypatch):
    """Two drivers of one framework (here: numpy, and a copy whose losses are 1e-3 off)
    have rows of their own labels, and the spread between them is what fails."""
    from smoothloss.testing.drivers import DRIVERS, NumpyDriver

    class Off(NumpyDriver):
        name = "numpy-off"

        def call(self, fn, *arrays):
            loss, grad = fn(*arrays)
            return loss * (1 + 1e-3), grad

    monkeypatch.setitem(DRIVERS, "numpy-off", Off)
    monkeypatch.setattr(cli, "check_cases", lambda dtype: _real_cases(dtype)[:2])
    code, text = _check_text(frameworks=("numpy", "numpy-off"))
    assert code == 1, text
    rows = _table_rows(text)
    assert [row[0] for row in rows] == ["numpy"] * 3 + ["numpy-off"] * 3, text
    for row in rows:
        tol = float(row[6])
        spread = float(row[5])
        assert spread == pytest.approx(1e-3, rel=1e-2), text
        assert row[7] == ("FAIL" if spread > 2 * tol else "PASS"), text


def test_spread_is_a_dash_where_no_other_row_has_the_cases():
    code, text = _check_text(frameworks=("numpy",))
    assert all(row[5] == "-" for row in _table_rows(text)), text


def test_check_list_names_the_cases_and_runs_none(monkeypatch, capsys):
    def no_run(*args, **kwargs):
        raise AssertionError("check --list ran a case")

    monkeypatch.setattr(cli, "_run_case", no_run)
    monkeypatch.setattr(cli, "check", no_run)
    assert cli.main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for dtype in ("float32", "float64", "bfloat16", "float16"):
        ids = [c.id for c in _real_cases(dtype)]
        head = next(i for i, line in enumerate(lines) if line.startswith(f"{dtype}: "))
        assert lines[head].startswith(f"{dtype}: {len(ids)} cases"), out
        assert lines[head + 1:head + 1 + len(ids)] == [f"  {i}" for i in ids], out
    assert "  plain-int-K10-2d-float32" in lines and "  everything-int-K1000-2d-float64" in lines, out
    assert "[check]" not in out


def test_check_list_imports_no_framework():
    script = (
        "import sys, smoothloss.__main__ as cli\n"
        "assert cli.main(['check', '--list']) == 0\n"
        "loaded = [m for m in ('torch', 'jax', 'tensorflow', 'array_api_strict') if m in sys.modules]\n"
        "print('loaded:', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "loaded: []", out.stdout


def test_a_framework_not_installed_is_skipped_with_how_to_add_it(monkeypatch):
    from smoothloss.testing.drivers import JaxDriver, StrictDriver

    monkeypatch.setattr(JaxDriver, "installed", classmethod(lambda cls: False))  # jax-jit's too
    monkeypatch.setattr(StrictDriver, "installed", classmethod(lambda cls: False))
    monkeypatch.setattr(cli, "check_cases", lambda dtype: _real_cases(dtype)[:1])
    code, text = _check_text(frameworks=("numpy", "array_api_strict", "jax", "jax-jit"))
    assert code == 0, text
    lines = text.splitlines()
    assert lines[:3] == [
        f"[check] numpy {np.__version__}: looked for cpu; found cpu",
        '[check] array_api_strict: not installed, skipped (pip install array-api-strict, or "smoothloss[test]")',
        '[check] jax: not installed, skipped (pip install "smoothloss[jax]")',
    ], text
    assert lines[-2] == "skipped: array_api_strict, jax, jax-jit (not installed)", text
    assert [row[0] for row in _table_rows(text)] == ["numpy"] * 3, text


def test_nothing_skipped_says_so():
    code, text = _check_text(frameworks=("numpy",))
    assert text.splitlines()[-2] == "skipped: none", text


def test_check_with_only_torch_installed_runs_and_passes():
    """``pip install -e ".[torch]"``: jax, TensorFlow and array-api-strict absent (here made
    unimportable). The default check runs what is there, names what is not and passes."""
    pytest.importorskip("torch")
    script = (
        # the path finder, made blind to these names: import fails and find_spec says
        # None, as when they are not installed (a None in sys.modules would do that too,
        # but array_api_compat's type checks read sys.modules and trip over the None)
        "import sys, importlib.machinery as m\n"
        "class Absent:\n"
        "    NAMES = ('jax', 'jaxlib', 'optax', 'tensorflow', 'keras', 'array_api_strict')\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] not in self.NAMES:\n"
        "            return m.PathFinder.find_spec(name, path, target)\n"
        "    def invalidate_caches(self):\n"
        "        m.PathFinder.invalidate_caches()\n"
        "sys.meta_path = [Absent() if f is m.PathFinder else f for f in sys.meta_path]\n"
        "import smoothloss.__main__ as cli\n"
        "sys.exit(cli.main(['check']))\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    lines = out.stdout.splitlines()
    assert '[check] array_api_strict: not installed, skipped (pip install array-api-strict, or "smoothloss[test]")' in lines
    assert '[check] jax: not installed, skipped (pip install "smoothloss[jax]")' in lines
    assert '[check] tensorflow: not installed, skipped (pip install "smoothloss[tensorflow]")' in lines
    assert any(line.startswith("[check] torch ") and line.endswith(": looked for cpu, cuda; found cpu") for line in lines)
    assert lines[-2] == "skipped: array_api_strict, jax-jit, tensorflow-function (not installed)", text
    assert sorted({row[0] for row in _table_rows(out.stdout)}) == ["numpy", "torch"], text
    assert lines[-1].endswith("all PASS"), text


def test_check_help_mentions_list_and_the_columns():
    out = _cli("check", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "--list" in text and "spread" in text and "jax-jit" in text
