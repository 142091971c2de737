"""What the run-time label check costs inside a framework's compiled step.

Where labels cannot be read on the host (``torch.compile``, ``tf.function``), smoothloss
adds the framework's own run-time check of the label range (a device-side assert, a
graph assertion: :meth:`smoothloss.backends._base.Framework.check`). At each size of
``CHECK_SIZES`` (float32 logits, integer labels, label_smoothing=0.1, forward+backward),
one fresh process per framework compiles the same step twice, with the check and
without it (:func:`smoothloss.backends._base.without_run_time_checks` while it traces),
and samples the two in turn (A, B, B, A, …), each sample averaging enough steps to last
a few milliseconds:

* torch: ``torch.compile(step)`` (Inductor), ``step(x, y) = smoothloss.cross_entropy(x, y,
  label_smoothing=0.1)``, then ``loss.backward()``;
* tensorflow: ``tf.function`` of the loss and its ``tf.GradientTape`` gradient.

:func:`summarise` gives per framework and size the median ms of each and the ratio
checked ÷ unchecked; :func:`markdown_lines` the table.

Imports ``smoothloss.bench.common`` only, and no framework at module level.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from smoothloss.bench.common import fmt_ms, fmt_ratio, log, ratio, run_worker, size_name

CHECK_SIZES = ((4096, 10), (4096, 1000))
CHECK_FRAMEWORKS = ("torch", "tensorflow")
CHECK_SMOOTHING = 0.1
CHECK_SAMPLES = 15  # samples of each variant, interleaved
CHECK_SAMPLE_S = 0.005  # each sample lasts at least this long


def _inputs(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    b, k = size
    rng = np.random.default_rng(11 + 1000003 * b + k)
    return rng.standard_normal((b, k), dtype=np.float32), rng.integers(0, k, size=(b,), dtype=np.int64)


def _steps(framework: str, size: tuple[int, int]) -> dict[str, Any]:
    """``{"checked": step, "unchecked": step}``: each a no-argument callable running one
    forward+backward and waiting for it, traced (at its first call) with or without
    the run-time check."""
    import smoothloss
    from smoothloss.backends._base import without_run_time_checks

    x_np, y_np = _inputs(size)
    steps: dict[str, Any] = {}
    if framework == "torch":
        import torch

        x, y = torch.tensor(x_np, requires_grad=True), torch.tensor(y_np)
        for name in ("checked", "unchecked"):
            compiled = torch.compile(lambda a, b: smoothloss.cross_entropy(a, b, label_smoothing=CHECK_SMOOTHING))

            def step(compiled: Any = compiled, name: str = name) -> None:
                x.grad = None
                if name == "checked":
                    compiled(x, y).backward()
                else:  # (Dynamo guards on the switch: the step is traced, and runs, inside it)
                    with without_run_time_checks():
                        compiled(x, y).backward()

            steps[name] = step
        return steps
    import tensorflow as tf

    x, y = tf.constant(x_np), tf.constant(y_np)

    def loss_and_grad(a: Any, b: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = smoothloss.cross_entropy(a, b, label_smoothing=CHECK_SMOOTHING)
        return loss, tape.gradient(loss, a)

    for name in ("checked", "unchecked"):
        fn = tf.function(loss_and_grad)
        if name == "unchecked":
            with without_run_time_checks():
                fn.get_concrete_function(x, y)  # traced here, without the check; later calls reuse it

        def step(fn: Any = fn) -> None:
            _, g = fn(x, y)
            g.numpy()

        steps[name] = step
    return steps


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``task: "checks"``: at each size of ``spec["sizes"]``, the interleaved median ms of the
    checked and the unchecked compiled step of ``spec["framework"]``."""
    framework = spec["framework"]
    rec: dict[str, Any] = {"framework": framework, "sizes": []}
    for size in spec["sizes"]:
        size = tuple(int(n) for n in size)
        entry: dict[str, Any] = {"size": list(size)}
        try:
            steps = _steps(framework, size)
            for step in steps.values():  # compile, and warm up
                for _ in range(3):
                    step()
            reps = {}
            for name, step in steps.items():
                t0, n = time.perf_counter(), 0
                while time.perf_counter() - t0 < CHECK_SAMPLE_S or n < 1:
                    step()
                    n += 1
                reps[name] = n
            samples: dict[str, list[float]] = {name: [] for name in steps}
            order = list(steps)
            for i in range(CHECK_SAMPLES):
                for name in order if i % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    for _ in range(reps[name]):
                        steps[name]()
                    samples[name].append((time.perf_counter() - t0) * 1e3 / reps[name])
            entry["median_ms"] = {name: float(statistics.median(v)) for name, v in samples.items()}
        except Exception as exc:  # noqa: BLE001 (reported in the table)
            entry["error"] = f"{type(exc).__name__}: {exc}"
        rec["sizes"].append(entry)
    return rec


def run(settings: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One subprocess per framework of ``CHECK_FRAMEWORKS`` among ``settings["frameworks"]``."""
    results = {}
    for framework in CHECK_FRAMEWORKS:
        if framework not in settings["frameworks"]:
            continue
        rec = run_worker({"task": "checks", "framework": framework, "sizes": [list(s) for s in CHECK_SIZES],
                          "threads": settings.get("threads"), "device": "cpu"}, timeout_s)
        results[framework] = rec
        for entry in rec.get("sizes", []):
            if "error" in entry:
                log(f"{framework} {size_name(entry['size']):>12} run-time check: FAILED {entry['error']}")
                continue
            med = entry["median_ms"]
            log(f"{framework} {size_name(entry['size']):>12} run-time check: checked {fmt_ms(med['checked'])} ms, "
                f"unchecked {fmt_ms(med['unchecked'])} ms")
        if "error" in rec:
            log(f"{framework} run-time check: FAILED {rec['error']}")
    return results


def failed(measured: dict[str, Any] | None) -> bool:
    if not measured:
        return False
    return any("error" in rec or any("error" in e for e in rec.get("sizes", [])) for rec in measured.values())


def summarise(measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: framework, size, checked and unchecked median ms, checked ÷ unchecked."""
    rows = []
    for framework, rec in measured.items():
        if "error" in rec:
            rows.append({"framework": framework, "size": None, "error": rec["error"]})
            continue
        for entry in rec["sizes"]:
            med = entry.get("median_ms") or {}
            rows.append({"framework": framework, "size": entry["size"], "error": entry.get("error"),
                         "checked_ms": med.get("checked"), "unchecked_ms": med.get("unchecked"),
                         "ratio": ratio(med.get("checked"), med.get("unchecked"))})
    return rows


def markdown_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The section "Run-time label check inside compiled steps"."""
    lines = [
        "",
        "Run-time label check inside compiled steps: on the CPU, float32 logits, integer labels, "
        f"label_smoothing={CHECK_SMOOTHING:g}, forward+backward; torch: `torch.compile` (Inductor) of "
        "`smoothloss.cross_entropy`, then `backward()`; TensorFlow: a `tf.function` of the loss and its "
        "`tf.GradientTape` gradient. Each is compiled twice in one fresh process, with smoothloss's "
        "run-time check of the label range (a device-side assert, a graph assertion) and without it, and the "
        "two are sampled in turn; checked ÷ unchecked > 1 is what the check costs:",
        "",
        "| framework | B×K | checked ms | unchecked ms | checked ÷ unchecked |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        size = "—" if r["size"] is None else size_name(r["size"])
        if r.get("error"):
            lines.append(f"| {r['framework']} | {size} | failed: {r['error'][:120]} | | |")
            continue
        lines.append(f"| {r['framework']} | {size} | {fmt_ms(r['checked_ms'])} | {fmt_ms(r['unchecked_ms'])} "
                     f"| {fmt_ratio(r['ratio'])} |")
    return lines
