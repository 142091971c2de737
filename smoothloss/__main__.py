"""Command line: ``python -m smoothloss check [--device DEV] [--frameworks ...] [--list]``
and ``python -m smoothloss bench``.

``check`` finds the installed frameworks and their devices, runs a fixed set of
conformance cases on each (both target kinds, both conventions, weights, ignore_index,
z-loss, softcap, kl; float32, float64 and the 16-bit floats the framework has), and
prints one table row per driver, device and dtype. A row is labelled by its driver, so
it says how the framework ran: ``jax-jit`` under ``jax.jit``, ``tensorflow-function``
under ``tf.function``, ``jax``, ``torch``, ... eagerly. Before the progress lines, one
line per framework gives its version and the devices looked for and found, or says it
is not installed, with the ``pip install`` that adds it; such a framework is skipped and
never imported. Under the table a legend says what the columns are: the largest relative
error of the loss and of the gradient (the framework's autodiff of the public loss, or
the closed form for NumPy and array-api-strict) against a float64 reference from the
same rounded inputs, the spread between rows of one device and dtype, and the tolerance
per dtype; then one line names what was skipped. ``check --list`` prints each dtype's
case ids and exits without running anything. The exit status is 1 if any row fails, or
if ``--device`` names a device that no framework has (then one line says which devices
each framework has). A row's device is the one its arrays were found on, never just the
one asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import re
import sys
import tempfile
import time
from typing import Any, Iterator

import numpy as np

from smoothloss.testing import reference_cross_entropy, rel_err, tolerance
from smoothloss.testing.cases import OPTION_SETS, Case

# One driver per framework: the compiled path where the framework has one.
CHECK_DRIVERS = ("numpy", "array_api_strict", "torch", "jax-jit", "tensorflow-function")
FLOAT_DTYPES = ("float32", "float64")
HALF_DTYPES = ("bfloat16", "float16")
CPU_ONLY = ("numpy", "array_api_strict")

# The device kinds each framework's driver asks about (``devices()`` in
# smoothloss/testing/drivers.py): torch and TensorFlow, CUDA besides the CPU; JAX, its
# default backend (a GPU, cuda or rocm, or a TPU) besides the CPU.
_LOOKED_FOR = {
    "numpy": ("cpu",), "array_api_strict": ("cpu",), "torch": ("cpu", "cuda"),
    "jax": ("cpu", "cuda", "rocm", "tpu"), "tensorflow": ("cpu", "cuda"),
}
# How to add a framework that is not installed (the extras of pyproject.toml).
_INSTALL_HINT = {
    "array_api_strict": 'pip install array-api-strict, or "smoothloss[test]"',
    "torch": 'pip install "smoothloss[torch]"',
    "jax": 'pip install "smoothloss[jax]"',
    "tensorflow": 'pip install "smoothloss[tensorflow]"',
}

# What native code (TensorFlow, XLA, absl) writes to the stderr file descriptor while the
# frameworks load: glog-style lines ("I0000 00:00:1796028449.81  4920 port.cc:153] ..."),
# TensorFlow's older "2025-01-01 12:00:00.000: I ..." lines and absl's warning that its
# logging is not set up. absl writes these before TF_CPP_MIN_LOG_LEVEL is read, so the CLI
# captures them and applies that level itself. The group is the severity: I, W, E or F.
_NATIVE_LOG_LINE = re.compile(
    r"(?:([IWEF])\d{4} \d+:\d+:\d+(?:\.\d+)? +\d+ [^\]\s]+:\d+\] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) "
    r"|(W)ARNING: All log messages before absl::InitializeLog\(\) is called)"
)


def check_cases(dtype: str) -> list[Case]:
    """Every option set at K=10 (probability targets for every other one) and K=1000
    for two; the 16-bit dtypes run a shorter list."""
    cases = []
    layouts = ("2d", "3d-last", "3d-axis1")
    half = dtype not in FLOAT_DTYPES
    case_dtype = "float32" if half else dtype
    for n, (name, opts) in enumerate(OPTION_SETS.items()):
        if half and n % 3:
            continue
        cases.append(Case(10, layouts[n % 3], case_dtype, "int", name, opts))
        if n % 2 and not opts.get("ignore"):
            cases.append(Case(10, layouts[(n + 1) % 3], case_dtype, "prob", name, opts))
    for name in ("ls", "everything"):
        cases.append(Case(1000, "3d-axis1" if name == "ls" else "2d", case_dtype, "int", name, OPTION_SETS[name]))
    return cases


def _device_label(raw: Any, with_index: bool = False) -> str:
    """'cpu', 'cuda', ... (with ``with_index``: 'cuda:0') from what a framework calls a
    device: 'cuda:0', '/job:localhost/replica:0/task:0/device:GPU:0',
    "array_api_strict.Device('CPU_DEVICE')", 'gpu', ..."""
    text = str(raw).strip().lower()
    quoted = re.search(r"device\(['\"]([^'\"]+)['\"]\)", text)  # array-api-strict
    if quoted:
        text = "cpu" if quoted.group(1) == "cpu_device" else quoted.group(1)
    text = text.rsplit("device:", 1)[-1].strip("/")  # TensorFlow
    kind, _, index = text.partition(":")
    kind = "cuda" if kind == "gpu" else kind
    return f"{kind}:{index or 0}" if with_index else kind


def _run_case(driver: Any, case: Case, dtype: str) -> tuple[float, float, np.ndarray, str]:
    """(loss error, grad error, loss, device) of one case on one driver, against the
    reference computed from the same rounded inputs. The device is where the logits and
    the loss actually are ('cpu', 'cuda', ...; two joined by '/' if they differ)."""
    import smoothloss

    logits, targets, opts = case.make()
    x = driver.asarray(logits, dtype)
    t = driver.asarray(targets, None if case.targets == "int" else dtype)
    native = dict(opts)
    if "weight" in opts:
        native["weight"] = driver.asarray(opts["weight"], dtype)
        opts["weight"] = driver.to_numpy(native["weight"]).astype(np.float64)
    ref_loss, ref_grad = reference_cross_entropy(
        driver.to_numpy(x).astype(np.float64), driver.to_numpy(t).astype(np.float64)
        if case.targets == "prob" else targets, **opts,
    )
    if driver.has_autodiff:  # the framework's own gradient of the public loss
        loss, grad = driver.value_and_grad(lambda x, t: smoothloss.cross_entropy(x, t, **native), x, t)
    else:  # NumPy and array-api-strict: the closed form
        loss, grad = driver.call(lambda x, t: smoothloss.cross_entropy_and_grad(x, t, **native), x, t)
    with_index = ":" in driver.device_name
    where = "/".join(sorted({_device_label(driver.device_of(a), with_index) for a in (x, loss)}))
    loss = driver.to_numpy(loss)
    loss_err = rel_err(loss, ref_loss)
    grad_err = rel_err(driver.to_numpy(grad), ref_grad)
    return loss_err, grad_err, loss, where


def _float64_scope(framework: str) -> Any:
    """JAX computes float64 only with x64 on: switch it on for this block and this
    thread, leaving the process's ``jax_enable_x64`` as the user set it."""
    if framework != "jax":
        return contextlib.nullcontext()
    import jax

    scope = getattr(jax, "enable_x64", None)
    if scope is None:  # older JAX
        from jax.experimental import enable_x64 as scope
    return scope(True)


@contextlib.contextmanager
def _native_logs_captured(min_level: int) -> Iterator[None]:
    """Capture what is written to the stderr file descriptor in this block (native code
    writes there directly, past ``sys.stderr``), then pass it on without the native log
    lines below ``min_level`` (TF_CPP_MIN_LOG_LEVEL: 1 drops I, 2 also W, 3 also E); all
    of it if the block raised."""
    if min_level <= 0:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        raised = True
        try:
            yield
            raised = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = []
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                m = _NATIVE_LOG_LINE.match(line)
                if raised or not m or "IWEF".index(next(g for g in m.groups() if g)) >= min_level:
                    kept.append(line)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _find_devices(
    frameworks: tuple[str, ...], device: str | None,
) -> tuple[dict[str, list[str] | None], dict[str, list[str]]]:
    """Per driver name: the device kinds its framework has here (None: not installed),
    and the devices to run it on (``device`` alone, or [] where it is missing)."""
    from smoothloss.testing.drivers import DRIVERS, get_driver

    found: dict[str, list[str] | None] = {}
    runs: dict[str, list[str]] = {}
    for name in frameworks:
        cls = DRIVERS[name]
        if not cls.installed():
            found[name], runs[name] = None, []
            continue
        found[name] = cls("cpu").devices()
        if device is None:
            runs[name] = list(found[name])
            continue
        try:
            get_driver(name, device).require_device()
        except RuntimeError:
            runs[name] = []
        else:
            runs[name] = [device]
    return found, runs


def _no_device_line(device: str, frameworks: tuple[str, ...], found: dict[str, list[str] | None]) -> str:
    """'no cuda device: torch has cpu; jax has cpu; tensorflow has cpu' (the CPU-only
    array libraries named only when nothing else was asked for)."""
    from smoothloss.testing.drivers import DRIVERS

    names = [n for n in frameworks if DRIVERS[n].framework not in CPU_ONLY] or list(frameworks)
    parts: dict[str, str] = {}  # framework -> what it has (jax and jax-jit: one entry)
    for name in names:
        kinds = found[name]
        what = "not installed" if kinds is None else f"has {', '.join(kinds)}"
        parts.setdefault(DRIVERS[name].framework, what)
    return f"no {device} device: " + "; ".join(f"{fw} {what}" for fw, what in parts.items())


def _frameworks_found(frameworks: tuple[str, ...], found: dict[str, list[str] | None]) -> list[str]:
    """One line per framework of the drivers asked for (jax and jax-jit: one line), in
    their order: '[check] torch 2.13.0: looked for cpu, cuda; found cpu', or
    '[check] jax: not installed, skipped (pip install "smoothloss[jax]")'. Only a
    framework that is installed is imported (for its version; its driver already has)."""
    from smoothloss.testing.drivers import DRIVERS

    lines: dict[str, str] = {}
    for name in frameworks:
        fw = DRIVERS[name].framework
        if fw in lines:
            continue
        kinds = found[name]
        if kinds is None:
            hint = _INSTALL_HINT.get(fw)
            lines[fw] = f"[check] {fw}: not installed, skipped" + (f" ({hint})" if hint else "")
            continue
        module = sys.modules.get(fw) or importlib.import_module(fw)
        version = getattr(module, "__version__", "(version unknown)")
        looked = list(_LOOKED_FOR.get(fw, ("cpu",)))
        looked += [k for k in kinds if k not in looked]
        note = f" (JAX_PLATFORMS={os.environ['JAX_PLATFORMS']})" if fw == "jax" and os.environ.get("JAX_PLATFORMS") else ""
        lines[fw] = f"[check] {fw} {version}: looked for {', '.join(looked)}{note}; found {', '.join(kinds)}"
    return list(lines.values())


def _legend(dtypes: tuple[str, ...] = FLOAT_DTYPES + HALF_DTYPES) -> list[str]:
    """What the table's columns are, printed under it."""
    tols = ", ".join(f"{d} {tolerance(d):.0e}" for d in dtypes)
    counts: dict[int, list[str]] = {}
    for d in dtypes:
        counts.setdefault(len(check_cases(d)), []).append(d)
    cases = ", ".join(f"{n} in {', '.join(ds[:-1])}{' and ' if ds[:-1] else ''}{ds[-1]}" for n, ds in counts.items())
    return [
        "framework: jax-jit ran under jax.jit, tensorflow-function under tf.function, the others eagerly.",
        "loss err, grad err: largest relative error over the cases of the loss and of its gradient",
        "  against a float64 reference from the same rounded inputs; the gradient is the framework's",
        "  autodiff of the public loss (numpy, array_api_strict: the closed form). FAIL above tol.",
        "spread: largest relative difference of a case's loss between two rows of the same device and",
        "  dtype (each against the first; -: no other row). FAIL above 2 x tol.",
        f"tol: the tolerance of the dtype: {tols}.",
        f"cases: {cases}; check --list names them.",
    ]


def list_cases(out: Any = None) -> int:
    """``check --list``: each dtype's case ids, as the failure lines name them; runs
    nothing and imports no framework. Prints to ``out`` (default: sys.stdout at the call)."""
    out = sys.stdout if out is None else out
    for dtype in FLOAT_DTYPES + HALF_DTYPES:
        cases = check_cases(dtype)
        drawn = {c.dtype for c in cases} - {dtype}
        how = f" (inputs drawn in {', '.join(sorted(drawn))}, then rounded to {dtype})" if drawn else ""
        print(f"{dtype}: {len(cases)} cases{how}", file=out)
        for case in cases:
            print(f"  {case.id}", file=out)
    return 0


def _check_framework(name: str, cls: Any, devices: list[str], rows: list[Any], per_case: dict[Any, Any], out: Any) -> None:
    """Run every dtype's cases on each device of one driver; append a row per device and
    dtype, labelled by the driver's name (its mode: 'jax' and 'jax-jit' apart), its device
    the one the arrays were on."""
    from smoothloss.testing.drivers import get_driver

    for dev in devices:
        driver = get_driver(name, dev)
        driver.require_device()  # run nowhere rather than somewhere else
        want = _device_label(dev, ":" in dev)
        for dtype in FLOAT_DTYPES + HALF_DTYPES:
            if not driver.supports(dtype):
                continue
            t0 = time.perf_counter()
            worst_loss = worst_grad = 0.0
            failed = []
            ran_on: set[str] = set()
            results = []
            for case in check_cases(dtype):
                try:
                    le, ge, loss, where = _run_case(driver, case, dtype)
                except Exception as exc:  # a crash is a failure, reported, not hidden
                    failed.append(f"{case.id}: {type(exc).__name__}: {exc}")
                    continue
                if where != want:  # e.g. a framework that put the work on the CPU instead
                    failed.append(f"{case.id}: ran on {where}, not on {want}")
                worst_loss, worst_grad = max(worst_loss, le), max(worst_grad, ge)
                ran_on.add(where)
                results.append((case.id, loss))
            row_dev = "/".join(sorted(ran_on)) or want
            for case_id, loss in results:
                per_case.setdefault((row_dev, dtype, case_id), []).append(loss)
            tol = tolerance(dtype)
            ok = not failed and worst_loss <= tol and worst_grad <= tol
            rows.append([name, row_dev, dtype, worst_loss, worst_grad, ok, failed])
            print(
                f"[check] {name:<19} {row_dev:<6} {dtype:<9} {len(check_cases(dtype))} cases "
                f"{time.perf_counter() - t0:5.1f}s {'PASS' if ok else 'FAIL'}",
                file=out, flush=True,
            )


def check(device: str | None = None, frameworks: tuple[str, ...] = CHECK_DRIVERS, out: Any = sys.stdout) -> int:
    """Run the conformance cases on every installed framework and device (``device``:
    that one only); 0 if all pass, 1 if any fails or no framework has ``device``."""
    # TensorFlow's and XLA's C++ logging (a level the user set is left as it is), before
    # they are imported; what absl prints before that level is read is captured below.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        min_log_level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        min_log_level = 0
    from smoothloss.testing.drivers import DRIVERS

    unknown = [f for f in frameworks if f not in DRIVERS]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown framework {names}; valid names: {', '.join(DRIVERS)}")
    if device is not None:  # 'CUDA', 'gpu:1' -> 'cuda', 'cuda:1'
        device = _device_label(device, ":" in device)

    # Every framework is imported and asked for its devices before the first progress
    # line, so that what they print at start-up does not land between the lines.
    with _native_logs_captured(min_log_level):
        found, runs = _find_devices(frameworks, device)
        head = _frameworks_found(frameworks, found)
    if device is not None and not any(runs.values()):
        print(_no_device_line(device, frameworks, found), file=out, flush=True)
        return 1
    for line in head:
        print(line, file=out, flush=True)

    rows: list[Any] = []
    per_case: dict[tuple[str, str, str], list[np.ndarray]] = {}  # (device, dtype, case id) -> losses
    skipped: dict[str, list[str]] = {}  # why -> driver names
    start = time.perf_counter()
    for name in frameworks:
        cls = DRIVERS[name]
        if found[name] is None:  # said above, once per framework
            skipped.setdefault("not installed", []).append(name)
            continue
        if not runs[name]:
            has = ", ".join(found[name] or [])
            print(f"[check] {name}: no {device} device (has {has}), skipped", file=out, flush=True)
            skipped.setdefault(f"no {device} device", []).append(name)
            continue
        with _float64_scope(cls.framework):
            _check_framework(name, cls, runs[name], rows, per_case, out)

    # Cross-framework spread: per device and dtype, the largest relative difference of
    # any case's loss between two rows (drivers), each against the first.
    spread: dict[tuple[str, str], float] = {}
    for (dev, dtype, _), values in per_case.items():
        if len(values) > 1:
            worst = max(rel_err(a, values[0]) for a in values[1:])
            spread[(dev, dtype)] = max(spread.get((dev, dtype), 0.0), worst)

    header = f"{'framework':<21}{'device':<8}{'dtype':<10}{'loss err':>10}{'grad err':>10}{'spread':>10}{'tol':>9}  result"
    print("", file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    all_ok = bool(rows)
    for label, dev, dtype, le, ge, ok, failed in rows:
        sp = spread.get((dev, dtype))
        ok = ok and (sp is None or sp <= 2 * tolerance(dtype))
        all_ok &= ok
        print(
            f"{label:<21}{dev:<8}{dtype:<10}{le:>10.1e}{ge:>10.1e}{'-' if sp is None else f'{sp:.1e}':>10}"
            f"{tolerance(dtype):>9.0e}  {'PASS' if ok else 'FAIL'}",
            file=out,
        )
        for line in failed:
            print(f"    {line}", file=out)
    print("", file=out)
    for line in _legend():
        print(line, file=out)
    what = "; ".join(f"{', '.join(names)} ({why})" for why, names in skipped.items())
    print(f"\nskipped: {what or 'none'}", file=out)
    print(f"{len(rows)} rows in {time.perf_counter() - start:.1f}s: {'all PASS' if all_ok else 'FAIL'}", file=out)
    return 0 if all_ok else 1


def _framework_names(text: str) -> tuple[str, ...]:
    """``--frameworks``: comma-separated driver names, each one of ``DRIVERS``."""
    from smoothloss.testing.drivers import DRIVERS

    names = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in names if f not in DRIVERS]
    if unknown or not names:
        hints = [f"{f!r} (did you mean {close[0]!r}?)" if close else repr(f)
                 for f in unknown for close in [difflib.get_close_matches(f, DRIVERS, n=1)]]
        what = f"unknown framework {', '.join(hints)}" if unknown else "no framework given"
        raise argparse.ArgumentTypeError(f"{what}; valid names: {', '.join(DRIVERS)}")
    return names


def _driver_names() -> tuple[str, ...]:
    from smoothloss.testing.drivers import DRIVERS

    return tuple(DRIVERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smoothloss",
        description="Check smoothloss against its float64 reference on every installed framework "
        "and device (check), or time it against each framework's own losses (bench).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser(
        "check", help="run the conformance cases on every installed framework and device",
        description="Run a fixed set of conformance cases (both target kinds, both conventions, weights, "
        "ignore_index, z-loss, softcap, kl; float32, float64 and the 16-bit floats each framework has) "
        "on every installed framework and device. First one line per framework: its version and the "
        "devices looked for and found, or that it is not installed (skipped, with the pip install that "
        "adds it). Then one row per driver, device and dtype, labelled by the driver, which says how the "
        "framework ran (jax-jit under jax.jit, tensorflow-function under tf.function, the others eagerly): "
        "loss err and grad err, the largest relative error of the loss and of its gradient (the "
        "framework's autodiff, or the closed form for numpy and array_api_strict) against a float64 "
        "reference from the same rounded inputs; spread, the largest relative difference of a case's loss "
        "between rows of one device and dtype (FAIL above 2 x tol); tol, the tolerance of the dtype; and "
        "PASS or FAIL. A legend under the table says the same, and a last line what was skipped. Exit "
        "status 1 if a row fails or no framework has the device asked for.",
    )
    p_check.add_argument("--device", default=None,
                         help="only this device (cpu, cuda, cuda:1, ...); default: every device found")
    p_check.add_argument(
        "--frameworks", default=",".join(CHECK_DRIVERS), type=_framework_names,
        help=f"comma-separated drivers, each a framework and a mode (default: {','.join(CHECK_DRIVERS)}; "
        f"all: {', '.join(_driver_names())})",
    )
    p_check.add_argument("--list", action="store_true",
                         help="print each dtype's case ids and exit, running nothing")
    sub.add_parser(
        "bench", add_help=False,
        help="time forward+backward and peak memory against each framework's own losses "
        "(python -m smoothloss bench --help for its options)",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from smoothloss.bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "check":
        return list_cases() if args.list else check(args.device, args.frameworks)
    return 2


if __name__ == "__main__":
    sys.exit(main())
