"""Command line: ``python -m smoothloss check [--device DEV]`` and ``python -m smoothloss bench``.

``check`` finds the installed frameworks and their devices, runs a fixed set of
conformance cases on each (both target kinds, both conventions, weights, ignore_index,
z-loss, softcap, kl; float32, float64 and the 16-bit floats the framework has), and
prints one table row per framework, device and dtype: the largest relative error of the
loss and of the gradient (autodiff and closed form) against the float64 reference, the
spread across frameworks, and PASS/FAIL. The exit status is 1 if any row fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

import numpy as np

from smoothloss.testing import reference_cross_entropy, rel_err, tolerance
from smoothloss.testing.cases import OPTION_SETS, Case

# One driver per framework: the compiled path where the framework has one.
CHECK_DRIVERS = ("numpy", "array_api_strict", "torch", "jax-jit", "tensorflow-function")
FLOAT_DTYPES = ("float32", "float64")
HALF_DTYPES = ("bfloat16", "float16")


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


def _run_case(driver: Any, case: Case, dtype: str) -> tuple[float, float, np.ndarray]:
    """(loss error, grad error, loss) of one case on one driver, against the reference
    computed from the same rounded inputs."""
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
    loss = driver.to_numpy(loss)
    loss_err = rel_err(loss, ref_loss)
    grad_err = rel_err(driver.to_numpy(grad), ref_grad)
    return loss_err, grad_err, loss


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


def _check_framework(name: str, cls: Any, device: str | None, rows: list[Any], per_case: dict[Any, Any], out: Any) -> None:
    """Run every dtype's cases on every device of one driver; append a row per dtype."""
    from smoothloss.backends.drivers import get_driver

    probe = cls("cpu")
    devices = [device] if device else probe.devices()
    for dev in devices:
        if cls.framework in ("numpy", "array_api_strict") and dev != "cpu":
            continue
        driver = get_driver(name, dev)
        for dtype in FLOAT_DTYPES + HALF_DTYPES:
            if not driver.supports(dtype):
                continue
            t0 = time.perf_counter()
            worst_loss = worst_grad = 0.0
            failed = []
            for case in check_cases(dtype):
                try:
                    le, ge, loss = _run_case(driver, case, dtype)
                except Exception as exc:  # a crash is a failure, reported, not hidden
                    failed.append(f"{case.id}: {type(exc).__name__}: {exc}")
                    continue
                worst_loss, worst_grad = max(worst_loss, le), max(worst_grad, ge)
                per_case.setdefault((dev, dtype, case.id), []).append(loss)
            tol = tolerance(dtype)
            ok = not failed and worst_loss <= tol and worst_grad <= tol
            rows.append([cls.framework, dev, dtype, worst_loss, worst_grad, ok, failed])
            print(
                f"[check] {cls.framework:<16} {dev:<6} {dtype:<9} {len(check_cases(dtype))} cases "
                f"{time.perf_counter() - t0:5.1f}s {'PASS' if ok else 'FAIL'}",
                file=out, flush=True,
            )


def check(device: str | None = None, frameworks: tuple[str, ...] = CHECK_DRIVERS, out: Any = sys.stdout) -> int:
    """Run the conformance cases on every installed framework and device; 0 if all pass."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from smoothloss.backends.drivers import DRIVERS

    rows: list[Any] = []
    per_case: dict[tuple[str, str, str], list[np.ndarray]] = {}  # (device, dtype, case id) -> losses
    start = time.perf_counter()
    for name in frameworks:
        cls = DRIVERS[name]
        if not cls.installed():
            print(f"[check] {name}: not installed, skipped", file=out, flush=True)
            continue
        with _float64_scope(cls.framework):
            _check_framework(name, cls, device, rows, per_case, out)

    # Cross-framework spread: per device and dtype, the largest relative difference of
    # any case's loss between two frameworks.
    spread: dict[tuple[str, str], float] = {}
    for (dev, dtype, _), values in per_case.items():
        if len(values) > 1:
            worst = max(rel_err(a, values[0]) for a in values[1:])
            spread[(dev, dtype)] = max(spread.get((dev, dtype), 0.0), worst)

    header = f"{'framework':<17}{'device':<8}{'dtype':<10}{'loss err':>10}{'grad err':>10}{'spread':>10}{'tol':>9}  result"
    print("", file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    all_ok = bool(rows)
    for fw, dev, dtype, le, ge, ok, failed in rows:
        sp = spread.get((dev, dtype), 0.0)
        ok = ok and sp <= 2 * tolerance(dtype)
        all_ok &= ok
        print(
            f"{fw:<17}{dev:<8}{dtype:<10}{le:>10.1e}{ge:>10.1e}{sp:>10.1e}{tolerance(dtype):>9.0e}  "
            f"{'PASS' if ok else 'FAIL'}",
            file=out,
        )
        for line in failed:
            print(f"    {line}", file=out)
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.1f}s: {'all PASS' if all_ok else 'FAIL'}", file=out)
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smoothloss", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="run the conformance cases on every installed framework and device")
    p_check.add_argument("--device", default=None, help="only this device (cpu, cuda, ...); default: all found")
    p_check.add_argument(
        "--frameworks", default=",".join(CHECK_DRIVERS),
        help=f"comma-separated drivers (default: {','.join(CHECK_DRIVERS)})",
    )
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
        return check(args.device, tuple(f for f in args.frameworks.split(",") if f))
    return 2


if __name__ == "__main__":
    sys.exit(main())
