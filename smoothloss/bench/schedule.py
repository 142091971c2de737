"""TensorFlow, a label-smoothing schedule: ε changes at every step of an eager loop.

At ``SCHEDULE_SIZE`` (float32 logits in a ``tf.Variable``, integer labels), each
implementation of ``SCHEDULE_IMPLS`` runs ``SCHEDULE_STEPS`` eager steps (a
``tf.GradientTape``, forward+backward with respect to the logits) with
ε = ``SCHEDULE_EPS_STEP``·(step+1), in a fresh process of its own:

* ``smoothloss``: ``smoothloss.cross_entropy(x, y, label_smoothing=ε)`` under
  ``smoothloss.set_compile_mode("always")``, so that its closed-form backward is the
  XLA-compiled ``tf.function`` of ``smoothloss.backends.tensorflow_compiled.XLA``; ε is a
  tensor input of that function, so the schedule should trace it once;
* ``keras.CCE``: ``keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=ε)``
  constructed anew at every step (that is how a schedule changes ε there), on
  ``tf.one_hot(y, K)`` built in the step.

Per step the worker records the wall time, the resident set (``VmRSS``) after it and, for
smoothloss, the XLA backward's trace count (``experimental_get_tracing_count``).
:func:`summarise` gives per implementation the traces over the steps, the resident-set
growth from step 2 to the last, the median step time of steps 2 to the last (step 1 traces
and compiles) and that median ÷ Keras's; :func:`markdown_lines` the table.

Imports ``smoothloss.bench.common`` only, and no framework at module level.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np

from smoothloss.bench.common import MIB, fmt_ms, fmt_ratio, log, ratio, rss_now_and_hwm, run_worker, size_name

SCHEDULE_SIZE = (512, 4096)
SCHEDULE_STEPS = 16
SCHEDULE_EPS_STEP = 0.01  # ε at step i (from 0): SCHEDULE_EPS_STEP * (i + 1)
SCHEDULE_BUILTIN = "keras.CCE"
SCHEDULE_IMPLS = {  # key -> label, smoothloss first
    "smoothloss": 'smoothloss.cross_entropy, set_compile_mode("always") (XLA backward)',
    SCHEDULE_BUILTIN: "Keras CategoricalCrossentropy(label_smoothing=ε) on one-hot, new each step",
}
LOSS_RTOL = 1e-4  # smoothloss's and Keras's loss at the same step and ε agree to this


def epsilons(steps: int) -> list[float]:
    """The schedule: ε of each step.

    >>> epsilons(3)
    [0.01, 0.02, 0.03]
    """
    return [round(SCHEDULE_EPS_STEP * (i + 1), 12) for i in range(steps)]


def _inputs(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    b, k = size
    rng = np.random.default_rng(7 + 1000003 * b + k)
    return rng.standard_normal((b, k), dtype=np.float32), rng.integers(0, k, size=(b,), dtype=np.int64)


def _rss_mib() -> float | None:
    now = rss_now_and_hwm()
    return None if now is None else now[0] / MIB


# --------------------------------------------------------------------------- worker


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``task: "schedule"``: ``spec["steps"]`` eager steps of ``spec["implementation"]`` at
    ``spec["size"]``, ε changing every step; per step its ms, VmRSS MiB after it, its loss and
    (smoothloss) the XLA backward's trace count. Restores the compile mode it changes (the
    tests run it in their own process)."""
    import keras
    import tensorflow as tf

    import smoothloss
    from smoothloss.backends.tensorflow_compiled import XLA

    key, size, steps = spec["implementation"], tuple(spec["size"]), int(spec["steps"])
    device = spec.get("device", "cpu")
    on_gpu = device != "cpu"
    where = f"/GPU:{int(device.partition(':')[2] or 0)}" if on_gpu else "/CPU:0"
    rec: dict[str, Any] = {"implementation": key, "size": list(size), "steps": steps, "device": device,
                           "pid": os.getpid(), "eps": epsilons(steps)}
    x_np, y_np = _inputs(size)
    with tf.device(where):
        x = tf.Variable(x_np)
        y = tf.constant(y_np)
    k = size[1]
    backward = XLA.kernels_by_name["backward"][0]

    def loss_of(eps: float) -> Any:
        if key == "smoothloss":
            return smoothloss.cross_entropy(x, y, label_smoothing=eps)
        cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)
        return cce(tf.one_hot(y, k), x)

    previous = smoothloss.set_compile_mode("always") if key == "smoothloss" else None
    step_ms, rss, traces, losses = [], [], [], []
    try:
        rec["traces_before"] = backward.experimental_get_tracing_count() if key == "smoothloss" else None
        calls_before = XLA.calls["backward"]
        rec["rss_before_mib"] = _rss_mib()
        for eps in rec["eps"]:
            t0 = time.perf_counter()
            with tf.device(where):
                with tf.GradientTape() as tape:
                    loss = loss_of(eps)
                grad = tape.gradient(loss, x)
            if on_gpu:
                tf.test.experimental.sync_devices()
            else:
                grad.numpy()
            step_ms.append((time.perf_counter() - t0) * 1e3)
            rss.append(_rss_mib())
            if key == "smoothloss":
                traces.append(backward.experimental_get_tracing_count())
            losses.append(float(loss.numpy()))
            del loss, grad
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec
    finally:
        if previous is not None:
            smoothloss.set_compile_mode(previous)
    rec.update(step_ms=step_ms, rss_mib=rss, loss=losses, traces=traces if key == "smoothloss" else None)
    if key == "smoothloss":
        rec["compile_mode"] = "always"
        rec["compiled_calls"] = XLA.calls["backward"] - calls_before  # steps that ran the XLA backward
        rec["compile_failed"] = XLA.broken
    return rec


# --------------------------------------------------------------------------- run (parent)


def run(settings: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Each implementation of ``SCHEDULE_IMPLS`` in a fresh subprocess at ``settings["schedule_size"]``."""
    size = [int(n) for n in settings["schedule_size"]]
    steps = int(settings.get("schedule_steps") or SCHEDULE_STEPS)
    results = {}
    for key in SCHEDULE_IMPLS:
        rec = run_worker({"task": "schedule", "framework": "tensorflow", "implementation": key, "size": size,
                          "steps": steps, "threads": settings.get("threads"),
                          "device": settings.get("device", "cpu")}, timeout_s)
        rec.setdefault("implementation", key)
        results[key] = rec
        row = _row(key, rec, None)
        msg = (f"traces {row['traces'] if row['traces'] is not None else '—'}, RSS growth steps 2–{steps} "
               f"{_fmt_mib(row['rss_growth_mib'])} MiB, median step {fmt_ms(row['median_ms'])} ms"
               if "error" not in rec else f"FAILED {rec['error']}")
        log(f"tensorflow {size_name(size):>12} schedule, fresh process, {key}: {msg}")
    return {"size": size, "steps": steps, "eps": epsilons(steps), "results": results}


def failed(measured: dict[str, Any] | None) -> bool:
    return bool(measured) and any("error" in r for r in measured["results"].values())


# --------------------------------------------------------------------------- report


def _row(key: str, rec: dict[str, Any], builtin_median: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"implementation": key, "traces": None, "rss_growth_mib": None, "median_ms": None,
                           "first_step_ms": None, "vs_builtin": None, "error": rec.get("error")}
    if row["error"]:
        return row
    ms, rss, traces = rec["step_ms"], rec["rss_mib"], rec.get("traces")
    if traces:
        row["traces"] = traces[-1] - (rec.get("traces_before") or 0)
    if len(rss) >= 2 and rss[1] is not None and rss[-1] is not None:
        row["rss_growth_mib"] = rss[-1] - rss[1]
    if ms:
        row["first_step_ms"] = ms[0]
    if len(ms) >= 2:
        row["median_ms"] = float(statistics.median(ms[1:]))
    row["vs_builtin"] = ratio(row["median_ms"], builtin_median)
    if key == "smoothloss":
        row["compiled_calls"] = rec.get("compiled_calls")
        row["compile_failed"] = rec.get("compile_failed")
    return row


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    """Per implementation: traces over the steps (smoothloss), VmRSS growth from step 2 to the
    last (MiB), the median ms of steps 2 to the last and its ratio to Keras's; and whether the two
    losses agree at every step (None where either failed)."""
    recs = measured["results"]
    ref = recs.get(SCHEDULE_BUILTIN, {})
    ref_median = _row(SCHEDULE_BUILTIN, ref, None)["median_ms"] if ref else None
    rows = [_row(key, rec, ref_median) for key, rec in recs.items()]
    sl = recs.get("smoothloss", {}).get("loss")
    kl = ref.get("loss")
    match = None
    if sl and kl and len(sl) == len(kl):
        match = all(abs(a - b) <= LOSS_RTOL * max(1.0, abs(b)) for a, b in zip(sl, kl))
    return {"size": measured["size"], "steps": measured["steps"], "eps": measured["eps"],
            "builtin": SCHEDULE_BUILTIN, "rows": rows, "losses_match": match}


def _fmt_mib(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def markdown_lines(s: dict[str, Any], device: str = "cpu") -> list[str]:
    """The section "TensorFlow smoothing schedule (ε changes every step, eager, B×K)"."""
    n, eps = s["steps"], s["eps"]
    where = "CPU" if device == "cpu" else device
    lines = [
        "",
        f"TensorFlow smoothing schedule (ε changes every step, eager, {size_name(s['size'])}): on the {where}, "
        f"float32 logits in a `tf.Variable`, integer labels, {n} eager steps (forward+backward under a "
        f"`tf.GradientTape`) with ε = {SCHEDULE_EPS_STEP:g}·(step+1), from {eps[0]:g} to {eps[-1]:g}; each "
        "implementation in a new Python process. smoothloss runs with `set_compile_mode(\"always\")`, so its "
        "backward is its XLA-compiled `tf.function`, which takes ε as a tensor input; traces: how many times "
        f"that function was traced in the {n} steps. Keras's `CategoricalCrossentropy(from_logits=True, "
        "label_smoothing=ε)` is constructed anew at every step, on `tf.one_hot(y, K)` built in the step. RSS "
        f"growth: VmRSS after step {n} minus after step 2; median step ms: of steps 2–{n} (step 1, which traces "
        "and compiles smoothloss's backward, is left out):",
        "",
        f"| implementation | traces | RSS growth steps 2–{n} MiB | median step ms | ÷ Keras |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        label = SCHEDULE_IMPLS.get(r["implementation"], r["implementation"])
        if r["error"]:
            lines.append(f"| {label} | failed: {r['error'][:120]} | | | |")
            continue
        traces = "—" if r["traces"] is None else str(r["traces"])
        lines.append(f"| {label} | {traces} | {_fmt_mib(r['rss_growth_mib'])} | {fmt_ms(r['median_ms'])} "
                     f"| {fmt_ratio(r['vs_builtin'])} |")
    if s["losses_match"] is True:
        lines += ["", f"The two losses agree at every step (relative difference ≤ {LOSS_RTOL:g})."]
    elif s["losses_match"] is False:
        lines += ["", f"**The two losses differ** at some step (by more than {LOSS_RTOL:g} relative)."]
    return lines
