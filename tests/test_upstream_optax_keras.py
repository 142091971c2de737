"""optax's and Keras's own test cases, run against smoothloss's drop-ins.

The installed wheels ship their tests: ``optax/losses/_classification_test.py``,
``optax/losses/_smoothing_test.py`` and ``keras/src/losses/losses_test.py``. This module
loads those files from the installed packages (nothing of them is copied here), points
the name each file calls its losses through (``_classification``, ``_smoothing``,
``losses``) at a stand-in module in which the names smoothloss provides are
smoothloss's (``smoothloss.jax`` for optax, ``smoothloss.keras`` for Keras) and every
other name is upstream's, and runs with ``unittest`` every upstream case whose body
calls one of the substituted names. Cases of other losses (hinge, poisson, ...) are not
run.

Every suite runs in a fresh subprocess (``python this_file.py --suite ...``), all of them
at once: Keras fixes its backend per process (``KERAS_BACKEND``), and a fresh process
also keeps the upstream cases away from this process's state (the root conftest turns
on ``jax_enable_x64``; ``filterwarnings = error``). Each subprocess writes one outcome
per case as JSON; each case is then one pytest id here, ``test_upstream_case[<suite>::
<Class>.<method>]``, and each suite (Keras: each backend) has its own
``test_upstream_suite[<suite>]``, which checks that the run found the cases collected
here and at least ``MIN_CASES_RUN[suite]`` of them ran.

``KNOWN_DIFFERENCES`` lists the cases where smoothloss deliberately differs from
upstream (docs/migration.md, "Upstream test cases"). Such a case must fail upstream's
assertion with the given text, like a strict xfail: when it starts passing, or fails
differently, its test fails. Every other case must pass. Upstream's own
``pytest.mark.skipif`` marks are honoured (a skipped case skips here, with upstream's
reason). A framework that is not installed, or an upstream layout that has moved (file,
class or module name), skips with a reason naming what is missing.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
import unittest
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# pytest -n auto (README): the module's subprocess runs start once, in one worker
pytestmark = pytest.mark.xdist_group("upstream")

REPO = Path(__file__).resolve().parents[1]
OPTAX_NAMES = ("softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels", "smooth_labels")
KERAS_NAMES = (
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
)
KERAS_BACKENDS = ("tensorflow", "jax", "torch")


class Suite:
    """One upstream test file, run on one framework (for Keras: one backend)."""

    def __init__(
        self,
        name: str,
        package: str,
        path: str,
        attribute: str,
        dropin: str,
        names: tuple[str, ...],
        classes: tuple[str, ...],
        needs: tuple[str, ...],
        backend: str | None = None,
    ) -> None:
        self.name = name  # the prefix of every case id
        self.package = package  # the installed package that ships the test file
        self.path = path  # the test file, relative to the package's folder
        self.attribute = attribute  # the name the test file calls its losses through
        self.dropin = dropin  # smoothloss's module that provides the substitutes
        self.names = names  # the names substituted (where upstream has them)
        self.classes = classes  # upstream classes this module expects cases in
        self.needs = needs  # frameworks the run imports
        self.backend = backend  # KERAS_BACKEND of the subprocess


SUITES = {
    s.name: s
    for s in [
        Suite(
            "optax-classification", "optax", "losses/_classification_test.py", "_classification",
            "smoothloss.jax", OPTAX_NAMES,
            ("SoftmaxCrossEntropyTest", "SoftmaxCrossEntropyWithIntegerLabelsTest"), ("jax", "optax", "absl"),
        ),
        Suite(
            "optax-smoothing", "optax", "losses/_smoothing_test.py", "_smoothing",
            "smoothloss.jax", OPTAX_NAMES, ("SmoothLabelsTest",), ("jax", "optax", "absl"),
        ),
        *[
            Suite(
                f"keras-{b}", "keras", "src/losses/losses_test.py", "losses", "smoothloss.keras", KERAS_NAMES,
                ("BinaryCrossentropyTest", "CategoricalCrossentropyTest", "SparseCategoricalCrossentropyTest"),
                ("keras", b), backend=b,
            )
            for b in KERAS_BACKENDS
        ],
    ]
}

# Cases run today (passed plus known differences), per suite: a run that finds fewer
# cases (an upstream file emptied, a discovery bug) fails rather than passing on nothing.
MIN_CASES_RUN = {
    "optax-classification": 30,
    "optax-smoothing": 2,
    "keras-tensorflow": 31,
    "keras-jax": 31,
    "keras-torch": 31,
}

_ANY_AXIS = (
    "DID NOT RAISE ValueError",
    (
        "smoothloss's sparse loss takes any class axis on every backend and gives the value "
        "upstream expects on torch; Keras raises on this backend (axis=-1 only)"
    ),
)

# Upstream case id -> (text upstream's failure must contain, why smoothloss differs).
# Each is a row of docs/migration.md, "Upstream test cases".
KNOWN_DIFFERENCES: dict[str, tuple[str, str]] = {
    "optax-classification::PolyLossTest.test_equals_to_cross_entropy_when_eps04": (
        "ValueError: the class axis has size K=1",
        "one class: the loss is identically 0, so smoothloss raises (SPEC: K = 1 raises ValueError)",
    ),
    **{
        f"keras-{backend}::SparseCategoricalCrossentropyTest.test_{kind}_segmentation_different_axis": _ANY_AXIS
        for backend in ("tensorflow", "jax")
        for kind in ("binary", "multi_class")
    },
}


# ----------------------------------------------------------------------------- locating upstream
class Missing(Exception):
    """Part of the upstream layout this module relies on is not there."""


def _package_dir(package: str) -> Path:
    """The installed package's folder, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise Missing(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _test_file(suite: Suite) -> Path:
    path = _package_dir(suite.package) / suite.path
    if not path.is_file():
        raise Missing(f"{suite.package} no longer ships {suite.path} (looked for {path})")
    return path


def _scoped_methods(suite: Suite) -> dict[str, set[str]]:
    """{class: method names} of the upstream test methods that call a substituted name
    (``<attribute>.<name>``, e.g. ``losses.CategoricalCrossentropy``), read from the source."""
    tree = ast.parse(_test_file(suite).read_text(encoding="utf-8"))
    scoped: dict[str, set[str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")):
            calls = {
                n.attr
                for n in ast.walk(fn)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == suite.attribute
            }
            if calls & set(suite.names):
                scoped.setdefault(cls.name, set()).add(fn.name)
    absent = [c for c in suite.classes if c not in scoped]
    if absent:
        raise Missing(
            f"{suite.package}'s {suite.path} has no test class {', '.join(absent)} calling "
            f"{suite.attribute}.<{'|'.join(suite.names)}> (renamed or moved?)"
        )
    return scoped


def _load(suite: Suite) -> types.ModuleType:
    """The upstream test file as a fresh module (not registered under its own name)."""
    path = _test_file(suite)
    spec = importlib.util.spec_from_file_location(f"_upstream_{suite.name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, suite.attribute, None), types.ModuleType):
        raise Missing(f"{suite.path} no longer imports its losses as {suite.attribute!r}")
    return module


def _cases(module: types.ModuleType, scoped: dict[str, set[str]]) -> dict[str, unittest.TestCase]:
    """{"Class.method": test case} for the scoped methods, parameterized ones expanded."""
    loader = unittest.TestLoader()
    out = {}
    for cls_name, methods in sorted(scoped.items()):
        cls = getattr(module, cls_name)
        for name in loader.getTestCaseNames(cls):
            fn = getattr(cls, name)
            if getattr(fn, "__wrapped__", fn).__name__ in methods:
                out[f"{cls_name}.{name}"] = cls(name)
    return out


def _collect() -> list[Any]:
    """pytest params: one per upstream case (or one skip per unavailable suite)."""
    params = []
    for suite in SUITES.values():
        missing = [m for m in suite.needs if importlib.util.find_spec(m) is None]
        try:
            if missing:
                raise Missing(f"{', '.join(missing)} not installed")
            scoped = _scoped_methods(suite)
            if suite.package == "keras":
                # No Keras case is parameterized: the source names the cases, and Keras
                # (its backend fixed at import) is only imported in the subprocesses.
                names = sorted(f"{c}.{m}" for c, ms in scoped.items() for m in ms)
            else:
                names = sorted(_cases(_load(suite), scoped))
        except Missing as e:
            reason = f"{suite.name}: {e}"
            params.append(pytest.param(f"{suite.name}::-", marks=pytest.mark.skip(reason=reason), id=f"{suite.name}::-"))
            continue
        params += [pytest.param(f"{suite.name}::{n}", id=f"{suite.name}::{n}") for n in names]
    return params


# ----------------------------------------------------------------------------- the run (subprocess side)
def _substitute(module: types.ModuleType, suite: Suite) -> list[str]:
    """Point ``module.<attribute>`` at a copy of upstream's module in which the names
    smoothloss provides are smoothloss's; returns the names substituted."""
    dropin = importlib.import_module(suite.dropin)
    upstream = getattr(module, suite.attribute)
    standin = types.ModuleType(upstream.__name__, upstream.__doc__)
    standin.__dict__.update({k: v for k, v in vars(upstream).items() if not k.startswith("__")})
    done = [n for n in suite.names if hasattr(upstream, n)]
    for n in done:
        setattr(standin, n, getattr(dropin, n))
    setattr(module, suite.attribute, standin)
    return done


def _pytest_skip_reason(case: unittest.TestCase) -> str | None:
    """Upstream's ``pytest.mark.skip``/``skipif(<bool>)`` on the method, which
    ``unittest`` does not see."""
    fn = getattr(type(case), case._testMethodName)
    marks = getattr(fn, "pytestmark", None) or getattr(getattr(fn, "__wrapped__", fn), "pytestmark", [])
    for mark in marks:
        if mark.name == "skip" or (mark.name == "skipif" and mark.args and mark.args[0] is True):
            return "upstream skips it: " + str(mark.kwargs.get("reason", ""))
    return None


def _outcome(case: unittest.TestCase) -> dict[str, Any]:
    reason = _pytest_skip_reason(case)
    if reason is not None:
        return {"outcome": "skipped", "detail": reason}
    # Some upstream cases draw inputs from NumPy's global generator without a seed
    # (optax's ``test_mask``); a fixed seed per case makes every run the same run.
    np.random.seed(zlib.crc32(case.id().encode()))
    result = unittest.TestResult()
    start = time.perf_counter()
    case.run(result)
    seconds = round(time.perf_counter() - start, 3)
    problems = result.failures + result.errors + [(c, "unexpected success") for c in result.unexpectedSuccesses]
    if problems:
        return {"outcome": "failed", "detail": problems[0][1], "seconds": seconds}
    if result.skipped:
        return {"outcome": "skipped", "detail": "upstream skips it: " + result.skipped[0][1], "seconds": seconds}
    return {"outcome": "passed", "detail": "", "seconds": seconds}


def run_suite(name: str) -> dict[str, Any]:
    """Run one suite's scoped cases in this process: {"cases": {case id: outcome}, ...}."""
    suite = SUITES[name]
    if suite.backend is not None:
        import keras

        if keras.backend.backend() != suite.backend:
            raise RuntimeError(f"KERAS_BACKEND={suite.backend} gave Keras backend {keras.backend.backend()}")
    module = _load(suite)
    substituted = _substitute(module, suite)
    cases = _cases(module, _scoped_methods(suite))
    return {
        "substituted": substituted,
        "cases": {f"{name}::{case_id}": _outcome(case) for case_id, case in cases.items()},
    }


def _main() -> None:
    parser = argparse.ArgumentParser(description="run upstream test cases against smoothloss (JSON out)")
    parser.add_argument("--suite", required=True, choices=sorted(SUITES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    report = run_suite(args.suite)
    Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")


# ----------------------------------------------------------------------------- the tests (pytest side)
class _Runs:
    """The suites' subprocesses, all started at once on first use."""

    def __init__(self, names: set[str], folder: Path) -> None:
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            suite = SUITES[name]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
            env["TF_CPP_MIN_LOG_LEVEL"] = "3"
            if suite.backend is not None:
                env["KERAS_BACKEND"] = suite.backend
            out = folder / f"{name}.json"
            cmd = [sys.executable, __file__, "--suite", name, "--out", str(out)]
            with open(folder / f"{name}.log", "wb") as log:  # the child keeps its own handle
                proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            self.procs[name] = (proc, out)

    def result(self, name: str) -> dict[str, Any]:
        if name not in self.results:
            proc, out = self.procs[name]
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode != 0 or not out.exists():
                log = out.with_suffix(".log").read_text(errors="replace")[-4000:]
                self.results[name] = {"error": f"the {name} run exited with {proc.returncode}:\n{log}"}
            else:
                self.results[name] = json.loads(out.read_text(encoding="utf-8"))
        return self.results[name]

    def close(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Starts the subprocesses of every suite this session's selected tests need."""
    needed = set()
    for item in request.session.items:
        # (getattr: doctest items have no module)
        if getattr(item, "module", None) is sys.modules[__name__] and hasattr(item, "callspec"):
            value = next(iter(item.callspec.params.values()))
            suite = str(value).split("::")[0]
            if suite in SUITES and suite not in UNAVAILABLE:
                needed.add(suite)
    started = _Runs(needed, tmp_path_factory.mktemp("upstream"))
    yield started
    started.close()


def _suite_result(runs: _Runs, name: str) -> dict[str, Any]:
    result = runs.result(name)
    if "error" in result:
        pytest.fail(result["error"], pytrace=False)
    return result


CASES = _collect() if __name__ != "__main__" else []
UNAVAILABLE = {str(p.values[0]).split("::")[0] for p in CASES if str(p.values[0]).endswith("::-")}


@pytest.mark.parametrize("case", CASES)
def test_upstream_case(case: str, runs: _Runs) -> None:
    """One upstream case: passes against smoothloss, or fails as KNOWN_DIFFERENCES says."""
    suite = case.split("::")[0]
    outcomes = _suite_result(runs, suite)["cases"]
    if case not in outcomes:
        pytest.fail(f"{case} was collected from the source but the {suite} run did not find it")
    result = outcomes[case]
    if result["outcome"] == "skipped":
        pytest.skip(result["detail"])
    if case in KNOWN_DIFFERENCES:
        expected, why = KNOWN_DIFFERENCES[case]
        assert result["outcome"] == "failed", (
            f"{case} is listed in KNOWN_DIFFERENCES ({why}) but now passes against smoothloss: "
            "remove it there and from docs/migration.md"
        )
        assert expected in result["detail"], (
            f"{case} (a known difference: {why}) no longer fails with {expected!r}:\n{result['detail']}"
        )
    else:
        assert result["outcome"] == "passed", f"upstream case {case} fails against smoothloss:\n{result['detail']}"


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_upstream_suite(suite: str, runs: _Runs) -> None:
    """Each suite ran: the cases collected here, at least as many as today, all substituted."""
    collected = {str(p.values[0]) for p in CASES if str(p.values[0]).startswith(f"{suite}::")}
    skip = [p for p in CASES if str(p.values[0]) == f"{suite}::-"]
    if skip:
        pytest.skip(skip[0].marks[0].kwargs["reason"])
    if suite not in runs.procs:
        pytest.skip(f"no {suite} case selected")
    result = _suite_result(runs, suite)
    outcomes = result["cases"]
    assert set(outcomes) == collected, (
        f"cases run but not collected: {sorted(set(outcomes) - collected)}; "
        f"collected but not run: {sorted(collected - set(outcomes))}"
    )
    ran = [c for c, r in outcomes.items() if r["outcome"] != "skipped"]
    assert len(ran) >= MIN_CASES_RUN[suite], f"{suite}: only {len(ran)} cases ran, expected >= {MIN_CASES_RUN[suite]}"
    names = SUITES[suite].names
    assert result["substituted"] and set(result["substituted"]) <= set(names), result["substituted"]
    stale = [c for c in KNOWN_DIFFERENCES if c.startswith(f"{suite}::") and c not in collected]
    assert not stale, f"KNOWN_DIFFERENCES names cases upstream no longer has: {stale}"


if __name__ == "__main__":
    _main()
