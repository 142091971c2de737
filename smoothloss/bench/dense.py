"""The dense harness: smoothloss against each framework's own label-smoothed cross-entropy.

For every installed framework and every size B×K (float32 logits, integer labels,
``label_smoothing=ε``, mean reduction) this times one forward+backward step with respect
to the logits of

* torch: ``smoothloss.cross_entropy`` + ``.backward()`` in the default compile mode (compiled
  kernels from ``COMPILE_THRESHOLD`` logits up) and with ``set_compile_mode("never")`` (the
  eager kernels), ``F.cross_entropy(label_smoothing=ε)``, the same under ``torch.compile``
  (compiled by its first call at each size) and timm's ``LabelSmoothingCrossEntropy``
  formula written out (timm is not imported);
* jax: ``smoothloss.cross_entropy`` and optax (``softmax_cross_entropy`` on
  ``smooth_labels(one_hot(y))``), both as ``jax.jit(jax.value_and_grad(...))``;
* tensorflow: ``smoothloss.cross_entropy``, Keras ``CategoricalCrossentropy`` (on
  ``tf.one_hot(y)``, built inside the step) and Keras ``SparseCategoricalCrossentropy``
  (which has no label smoothing in Keras 3.15), each under ``tf.function`` with a
  ``GradientTape``;
* in each framework, the floor: its own softmax of the logits (torch eager without autograd,
  ``jax.jit(jax.nn.softmax)``, ``tf.function(tf.nn.softmax)``), which reads the logits twice
  and writes a B×K result once, as a loss and its gradient must at least. It is neither a
  built-in nor smoothloss; every implementation's time is also given ÷ the floor.

On torch a ladder of sizes (``CROSSOVER_SIZES``) times smoothloss with
``set_compile_mode("always")`` against ``"never"``: the smallest size from which the
compiled kernels win is the threshold the default mode should switch at. And at
``FIRST_CALL_SIZE``, each of smoothloss and ``F.cross_entropy`` in a fresh subprocess with
empty Inductor and Triton caches: the wall time of its first forward+backward (for smoothloss,
compiling its kernels included) and its steady state, the median of the last
``FIRST_CALL_STEADY`` of ``FIRST_CALL_CALLS`` calls.

``--device cuda`` puts the arrays on the GPU (torch synchronizes in every step, jax blocks
on its outputs); memory is then the device allocator's peak (torch, TensorFlow) or XLA's
memory analysis of the compiled step (jax).

Timing: one subprocess per framework; within a size the implementations are warmed up,
then sampled interleaved (A, B, C, B, C, A, ...), each sample averaging enough steps to
last ``min_sample_s``; the median and the spread (min/max, quartiles) are reported in
milliseconds with ratios smoothloss ÷ each built-in and ÷ the fastest built-in. A tiny
batch (32×10) is timed eagerly (torch eager, jax jitted, TensorFlow eager) for the
dispatch overhead.

``--quick`` measures ``QUICK_SIZES`` only, smoothloss's default against the framework's main
built-in only (:func:`selected_impls`), and closes with one verdict line per framework at
``VERDICT_SIZE`` (``smoothloss.bench.dense_report.verdict_lines``).

Memory: each (framework, implementation, size) runs in a fresh subprocess (in ``--quick``
mode: inside the timing subprocess, before the timings, on the very steps then timed, after
their first calls; the timings follow with glibc's thresholds relaxed,
``smoothloss.bench.common.relax_mmap_threshold``, and TensorFlow keeps the system allocator
of the memory runs). In a fresh subprocess: after a warm-up on a small batch, the full-size
inputs are created and one full-size step is run (compiling / tracing it); its outputs
are dropped and ``malloc_trim`` hands freed pages back. The resident-set high-water mark
is then reset (Linux ``/proc/self/clear_refs``) and one more step is run: the peak
resident set minus the resident set just before it is the step's extra memory beyond
the inputs (the smaller of two such steps). Where the reset is unavailable, the
``ru_maxrss`` growth over the first full-size step is used instead (it includes
compilation), and the JSON says so.
Memory subprocesses run with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``,
256 KiB), so that every large block is mapped when allocated and unmapped when freed, and
TensorFlow with ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1``: its default oneDNN CPU allocator
pools large blocks, which would hide them from the resident set (timings use the default
allocators, except in ``--quick`` mode); see ``smoothloss.bench.common.child_env``.

The steps themselves are in ``smoothloss.bench.dense_steps``; the memory measurement (and the
inputs) in ``smoothloss.bench.dense_memory``; the summary, the Markdown and the plot in
``smoothloss.bench.dense_report``.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothloss.bench import checks, schedule
from smoothloss.bench.common import fmt_ms, framework_info, log, relax_mmap_threshold, run_worker, size_name, threads_text
from smoothloss.bench.dense_memory import _inputs, _measure_memory, _memory_text, _torch_warmup_calls, logits_mib
from smoothloss.bench.dense_steps import STEP_BUILDERS, Steps

DEFAULT_SIZES = ((4096, 10), (4096, 1000), (1024, 32000), (256, 128256))
QUICK_SIZES = ((4096, 1000),)  # --quick: the size users run, nothing else
TINY = (32, 10)


@dataclass(frozen=True)
class Impl:
    """One implementation of the smoothed loss in one framework."""

    key: str
    label: str
    smoothing: bool  # computes the label-smoothed loss (False: Keras SCCE, plain CE)
    builtin: bool  # the framework's own loss (False: smoothloss, the floor)
    main: bool = False  # the built-in that the speed targets are ratios to
    floor: bool = False  # the framework's softmax of the logits: no loss, the least a step can cost


FLOOR_SUFFIX = ", 2 reads + 1 write of the logits"
IMPLS: dict[str, tuple[Impl, ...]] = {
    "torch": (
        Impl("smoothloss", "smoothloss.cross_entropy", True, False),
        Impl("smoothloss.eager", "smoothloss.cross_entropy, eager kernels", True, False),
        Impl("F.cross_entropy", "torch F.cross_entropy(label_smoothing)", True, True, main=True),
        Impl("torch_compiled_builtin", "torch.compile(F.cross_entropy)", True, True),
        Impl("timm", "timm LabelSmoothingCrossEntropy formula", True, True),
        Impl("floor", "floor: torch.softmax(x), no autograd" + FLOOR_SUFFIX, False, False, floor=True),
    ),
    "jax": (
        Impl("smoothloss", "smoothloss.cross_entropy (jit)", True, False),
        Impl("optax", "optax smooth_labels + softmax_cross_entropy (jit)", True, True, main=True),
        Impl("floor", "floor: jax.nn.softmax(x) (jit)" + FLOOR_SUFFIX, False, False, floor=True),
    ),
    "tensorflow": (
        Impl("smoothloss", "smoothloss.cross_entropy (tf.function)", True, False),
        Impl("keras.CCE", "Keras CategoricalCrossentropy on one-hot (tf.function)", True, True, main=True),
        Impl("keras.SCCE", "Keras SparseCategoricalCrossentropy, NO smoothing (tf.function)", False, True),
        Impl("floor", "floor: tf.nn.softmax(x) (tf.function)" + FLOOR_SUFFIX, False, False, floor=True),
    ),
}

# torch, smoothloss in compile mode "always" against "never", forward+backward: where the
# compiled kernels start to win (the threshold of the default mode, "auto").
CROSSOVER_SIZES = ((64, 100), (256, 100), (1024, 100), (256, 1000), (512, 1000), (1024, 1000), (4096, 1000))
CROSSOVER_IMPLS = (
    Impl("smoothloss.compiled", "smoothloss.cross_entropy, compiled kernels", True, False),
    Impl("smoothloss.eager", "smoothloss.cross_entropy, eager kernels", True, False),
)

# torch, each implementation in a fresh process with empty compiler caches: the first
# forward+backward at this size, then the steady state, the median of the last
# FIRST_CALL_STEADY of FIRST_CALL_CALLS calls (calls 41..50).
FIRST_CALL_SIZE = (4096, 1000)
FIRST_CALL_CALLS = 50
FIRST_CALL_STEADY = 10
FIRST_CALL_IMPLS = tuple(i for i in IMPLS["torch"] if i.key in ("smoothloss", "F.cross_entropy"))
FIRST_CALL_CACHES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")  # each a new empty directory per process

# The closing verdict: one line per framework at this size (where it was measured), smoothloss
# against the framework's main built-in, named as users call it.
VERDICT_SIZE = (4096, 1000)
VERDICT_NAMES = {"torch": "F.cross_entropy", "jax": "optax.softmax_cross_entropy",
                 "tensorflow": "Keras CategoricalCrossentropy"}

# The targets: ratios of smoothloss's median to another implementation's in the same run.
TARGET_SIZES = ((4096, 1000), (1024, 32000))
MAIN_TARGETS = {"torch": 0.35, "jax": 0.5, "tensorflow": 0.5}  # ≤ this × the main built-in at TARGET_SIZES
FLOOR_TARGETS = {"torch": 1.5, "jax": 2.0}  # ≤ this × the floor at FLOOR_TARGET_SIZE
FLOOR_TARGET_SIZE = (1024, 32000)
TINY_TARGETS = {"torch": 1.2, "tensorflow": 1.2}  # eager tiny batch: ≤ this × the main built-in
MEMORY_TARGETS = {"torch": 1.0, "jax": 1.0, "tensorflow": 1.25}  # extra memory ≤ this × logits + O(B)
EAGER_NOTE = {"torch": "torch eager", "jax": "jax jitted", "tensorflow": "TensorFlow eager (no tf.function)"}


# --------------------------------------------------------------------------- helpers


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"4096x10,1024x32000"`` → ``[(4096, 10), (1024, 32000)]`` (``x``, ``X``, ``×``, ``*``).

    >>> parse_sizes("4096x10, 8×5")
    [(4096, 10), (8, 5)]
    """
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        for sep in ("x", "X", "×", "*"):
            if sep in part:
                b, _, k = part.partition(sep)
                break
        else:
            raise ValueError(f"size {part!r} is not of the form BxK")
        try:
            size = (int(b), int(k))
        except ValueError:
            raise ValueError(f"size {part!r} is not of the form BxK with integers B and K") from None
        if size[0] < 1 or size[1] < 2:
            raise ValueError(f"size {part!r}: B must be >= 1 and K >= 2")
        sizes.append(size)
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def installed(framework: str) -> bool:
    extra = {"jax": ("optax",), "tensorflow": ("keras",)}.get(framework, ())
    return all(importlib.util.find_spec(m) is not None for m in (framework, *extra))


def _impl(framework: str, key: str) -> Impl:
    return next(i for i in IMPLS[framework] if i.key == key)


def selected_impls(framework: str, which: str | None = "all") -> tuple[Impl, ...]:
    """The implementations measured: every one of ``IMPLS[framework]`` ("all", None), or ("main",
    the --quick choice) smoothloss's default and the framework's main built-in.

    >>> [i.key for i in selected_impls("torch", "main")]
    ['smoothloss', 'F.cross_entropy']
    """
    if which in (None, "all"):
        return IMPLS[framework]
    if which == "main":
        return tuple(i for i in IMPLS[framework] if i.key == "smoothloss" or i.main)
    raise ValueError(f"implementations {which!r}: 'all' or 'main'")


def _stats(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "median_ms": float(med), "min_ms": float(a.min()), "max_ms": float(a.max()),
        "q1_ms": float(q1), "q3_ms": float(q3),
    }


# --------------------------------------------------------------------------- timing


def _time_size(framework: str, size: tuple[int, int], eps: float, repeats: int, warmup: int,
               min_sample_s: float, eager: bool, device: str = "cpu",
               impls: Sequence[Impl] | None = None, steps: Steps | None = None) -> dict[str, dict[str, Any]]:
    """Warm up, calibrate, then sample every implementation (default: ``IMPLS[framework]``) interleaved;
    ``steps``: the steps to time (default: new ones on ``_inputs(size)``)."""
    if steps is None:
        x_np, y_np = _inputs(size)
        steps = STEP_BUILDERS[framework](x_np, y_np, eps, eager, device)
    impls = [i for i in (IMPLS[framework] if impls is None else impls) if i.key in steps.steps]
    out: dict[str, dict[str, Any]] = {}
    inner: dict[str, int] = {}
    for impl in impls:
        step = steps.steps[impl.key]
        rec: dict[str, Any] = {"implementation": impl.key}
        out[impl.key] = rec
        try:
            calls = steps.compiled_calls() if steps.compiled_calls else None
            t0 = time.perf_counter()
            loss = step()
            rec["first_call_ms"] = (time.perf_counter() - t0) * 1e3  # includes tracing / compiling
            if not impl.floor:
                rec["loss"] = steps.to_float(loss)
            del loss
            # (torch: past the eager calls a signature makes before its compiled kernels are built)
            for _ in range(max(0, warmup - 1) + (_torch_warmup_calls() if calls is not None else 0)):
                step()
            if calls is not None:  # torch: whether the warmed-up step runs smoothloss's compiled kernels
                before = steps.compiled_calls()  # type: ignore[misc]
                step()
                rec["compiled_kernels"] = steps.compiled_calls() > before  # type: ignore[misc]
            t0 = time.perf_counter()
            step()
            one = max(time.perf_counter() - t0, 1e-7)
            inner[impl.key] = int(min(10000, max(1, math.ceil(min_sample_s / one))))
            rec["inner"] = inner[impl.key]
            rec["samples_ms"] = []
        except Exception as exc:  # one broken implementation must not hide the others
            rec["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{framework} {size_name(size)} {impl.key}: FAILED {rec['error']}")
    live = [i for i in impls if "error" not in out[i.key]]
    for r in range(repeats):
        gc.collect()
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for impl in order:
            step, n = steps.steps[impl.key], inner[impl.key]
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            out[impl.key]["samples_ms"].append((time.perf_counter() - t0) * 1e3 / n)
    steps.reset()
    for impl in live:
        out[impl.key].update(_stats(out[impl.key]["samples_ms"]))
    # The same loss from every smoothing implementation: we compare like with like.
    ref_key = "smoothloss" if "smoothloss" in out else (impls[0].key if impls else None)
    ref = out.get(ref_key, {}).get("loss") if ref_key else None
    for impl in impls:
        rec = out[impl.key]
        if ref is not None and "loss" in rec and impl.smoothing:
            rec["matches_smoothloss"] = bool(abs(rec["loss"] - ref) <= 1e-4 * max(1.0, abs(ref)))
            if not rec["matches_smoothloss"]:
                log(f"{framework} {size_name(size)} {impl.key}: loss {rec['loss']} differs from smoothloss {ref}")
    return out


def _worker_time(spec: dict[str, Any]) -> dict[str, Any]:
    fw = spec["framework"]
    device = spec.get("device", "cpu")
    info = framework_info(fw)
    result: dict[str, Any] = {"framework": fw, "info": info, "device": device, "sizes": [], "dispatch": None,
                              "memory": [], "crossover": None}
    log(f"{fw:<10} threads: {threads_text(fw, info, spec.get('threads'))}; device {device}")
    if fw == "torch":
        from smoothloss.backends.torch_compiled import COMPILE_THRESHOLD

        result["compile_threshold"] = COMPILE_THRESHOLD
    timing = (spec["smoothing"], spec["repeats"], spec["warmup"])
    impls = selected_impls(fw, spec.get("implementations"))
    # --quick: memory in this process, first (this process started with the memory subprocesses'
    # fixed mmap threshold), on the steps that are then timed; their first calls are made here
    warmed = _worker_memory(spec, impls, device, result["memory"]) if spec.get("memory_in_process") else {}
    if warmed:
        relax_mmap_threshold()  # the timings: heap blocks reused, as with the default allocator
    for size in spec["sizes"]:
        size = tuple(size)
        t0 = time.perf_counter()
        steps, first_ms = warmed.pop(size, (None, {}))
        if steps is None:
            x_np, y_np = _inputs(size)
            steps = STEP_BUILDERS[fw](x_np, y_np, spec["smoothing"], False, device)
        recs = _time_size(fw, size, *timing, spec["min_sample_s"], False, device, impls, steps)
        for key, ms in first_ms.items():  # the true first call, made before the memory measurement
            if key in recs:
                recs[key]["first_call_ms"] = ms
        del steps
        result["sizes"].append({"size": list(size), "results": recs})
        meds = ", ".join(f"{k} {v['median_ms']:.3g} ms" for k, v in recs.items() if "median_ms" in v)
        log(f"{fw:<10} {size_name(size):>12}: {meds} ({time.perf_counter() - t0:.1f}s)")
    if spec.get("tiny"):
        recs = _time_size(fw, TINY, *timing, spec["tiny_min_sample_s"], True, device, impls)
        result["dispatch"] = {"size": list(TINY), "mode": EAGER_NOTE[fw], "results": recs}
        meds = ", ".join(f"{k} {v['median_ms'] * 1e3:.0f} µs" for k, v in recs.items() if "median_ms" in v)
        log(f"{fw:<10} {size_name(TINY):>12} ({EAGER_NOTE[fw]}): {meds}")
    if fw == "torch" and spec.get("crossover_sizes"):
        result["crossover"] = _worker_crossover(spec, timing, device)
    if fw == "torch":
        from smoothloss.backends.torch_compiled import COMPILED

        result["compile_failed"] = COMPILED.broken  # why the eager kernels ran instead, if they did
    return result


def _worker_memory(spec: dict[str, Any], impls: Sequence[Impl], device: str,
                   out: list[dict[str, Any]]) -> dict[tuple[int, ...], tuple[Steps, dict[str, float]]]:
    """--quick, in the timing process before any timing: at each of ``spec["memory_sizes"]`` build the
    steps, make each implementation's first calls (compiling; torch: past the eager warm-up calls) and
    measure its extra memory into ``out``. Returns per size the steps, for timing, and each first
    call's ms."""
    fw, eps = spec["framework"], spec["smoothing"]
    warmed: dict[tuple[int, ...], tuple[Steps, dict[str, float]]] = {}
    for size in (tuple(s) for s in spec.get("memory_sizes") or []):
        x_np, y_np = _inputs(size)
        try:
            steps = STEP_BUILDERS[fw](x_np, y_np, eps, False, device)
        except Exception as exc:  # reported again by the timing
            log(f"{fw} {size_name(size)}: FAILED {type(exc).__name__}: {exc}")
            continue
        first_ms: dict[str, float] = {}
        for impl in impls:
            step = steps.steps.get(impl.key)
            if step is None:
                continue
            try:
                t0 = time.perf_counter()
                step()
                first_ms[impl.key] = (time.perf_counter() - t0) * 1e3
                for _ in range(1 + (_torch_warmup_calls() if steps.compiled_calls else 0)):
                    step()
                steps.reset()
            except Exception as exc:  # the timing reports it, with its error
                out.append({"framework": fw, "implementation": impl.key, "size": list(size),
                            "logits_mib": logits_mib(size), "error": f"{type(exc).__name__}: {exc}"})
                continue
            rec = _measure_memory(fw, impl.key, size, eps, fresh=False, device=device, steps=steps)
            out.append(rec)
            log(f"memory {fw:<10} {size_name(size):>12} {impl.key:<16} {_memory_text(rec)} (in-process)")
        warmed[size] = (steps, first_ms)
    return warmed


def _worker_crossover(spec: dict[str, Any], timing: tuple[float, int, int], device: str) -> dict[str, Any]:
    """torch: smoothloss with compile mode "always" against "never", interleaved, per size."""
    from smoothloss.backends.torch_compiled import COMPILE_THRESHOLD, COMPILED

    entries = []
    for size in spec["crossover_sizes"]:
        size = tuple(size)
        recs = _time_size("torch", size, *timing, spec["min_sample_s"], False, device, CROSSOVER_IMPLS)
        entries.append({"size": list(size), "logits": size[0] * size[1], "results": recs})
        c, e = (recs[i.key].get("median_ms") for i in CROSSOVER_IMPLS)
        log(f"torch      {size_name(size):>12}: compiled {fmt_ms(c)} ms, eager kernels {fmt_ms(e)} ms")
    return {"sizes": entries, "threshold": COMPILE_THRESHOLD, "compile_failed": COMPILED.broken}


def _worker_first_call(spec: dict[str, Any]) -> dict[str, Any]:
    """torch, in this fresh process: the wall time of each of ``FIRST_CALL_CALLS`` forward+backward
    calls of ``spec["implementation"]`` at ``spec["size"]``, the first made after importing torch
    and smoothloss and building the inputs; the steady state is the median of the last
    ``FIRST_CALL_STEADY``."""
    import torch
    import torch.nn.functional as F

    import smoothloss
    from smoothloss.bench.dense_steps import torch_device

    key, size, eps = spec["implementation"], tuple(spec["size"]), spec["smoothing"]
    device = spec.get("device", "cpu")
    rec: dict[str, Any] = {
        "implementation": key, "size": list(size), "device": device, "pid": os.getpid(),
        "caches": {v: os.environ.get(v) for v in FIRST_CALL_CACHES},
    }
    # whether each cache variable names an existing, empty directory before the first call
    rec["caches_empty"] = all(d is not None and Path(d).is_dir() and not any(Path(d).iterdir())
                              for d in rec["caches"].values())
    fn = {"smoothloss": lambda x, y: smoothloss.cross_entropy(x, y, label_smoothing=eps),
          "F.cross_entropy": lambda x, y: F.cross_entropy(x, y, label_smoothing=eps)}[key]
    dev = torch_device(device)
    x_np, y_np = _inputs(size)
    x = torch.from_numpy(x_np).to(dev).requires_grad_()
    y = torch.from_numpy(y_np).to(dev)
    calls_s = []
    try:
        for _ in range(FIRST_CALL_CALLS):
            x.grad = None
            t0 = time.perf_counter()
            loss = fn(x, y)
            loss.backward()
            if dev.type != "cpu":
                torch.cuda.synchronize(dev)
            calls_s.append(time.perf_counter() - t0)
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec
    rec["loss"] = float(loss.detach())
    rec["first_call_s"] = calls_s[0]
    rec["calls_ms"] = [t * 1e3 for t in calls_s]
    rec["steady_ms"] = float(np.median(rec["calls_ms"][-FIRST_CALL_STEADY:]))
    if key == "smoothloss":  # a fresh process: every compiled call counted was one of these
        from smoothloss.backends.torch_compiled import COMPILED

        rec["compiled_kernels"] = COMPILED.calls > 0
        rec["compile_failed"] = COMPILED.broken
    return rec


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``task: "time"``, ``"first_call"``, ``"schedule"`` (``smoothloss.bench.schedule``),
    ``"checks"`` (``smoothloss.bench.checks``) and ``"memory"`` workers of ``python -m smoothloss.bench --worker``."""
    if spec["task"] == "time":
        return _worker_time(spec)
    if spec["task"] == "first_call":
        return _worker_first_call(spec)
    if spec["task"] == "schedule":
        return schedule.worker(spec)
    if spec["task"] == "checks":
        return checks.worker(spec)
    return _measure_memory(spec["framework"], spec["implementation"], tuple(spec["size"]), spec["smoothing"], True,
                           spec.get("device", "cpu"))


# --------------------------------------------------------------------------- runs (parent)


def run(settings: dict[str, Any], timeout_s: float) -> dict[str, dict[str, Any]]:
    """One timing subprocess per framework of ``settings["frameworks"]`` (torch: then, unless
    ``settings["first_call_size"]`` is None, one first-call subprocess per implementation of
    ``FIRST_CALL_IMPLS``; tensorflow: then, unless ``settings["schedule_size"]`` is None, one
    smoothing-schedule subprocess per implementation of ``schedule.SCHEDULE_IMPLS``; torch and
    tensorflow: unless ``settings["checks"]`` is off, one subprocess timing the run-time label
    check, ``smoothloss.bench.checks``), then (unless
    quick or ``settings["memory"]`` is off) one memory subprocess per framework × implementation × size.
    Returns the results per framework (``{"error": ...}`` for a framework whose worker failed)."""
    frameworks: dict[str, dict[str, Any]] = {}
    for fw in settings["frameworks"]:
        spec = {
            "task": "time", "framework": fw, "sizes": settings["sizes"], "smoothing": settings["smoothing"],
            "repeats": settings["repeats"], "warmup": settings["warmup"], "min_sample_s": settings["min_sample_s"],
            "tiny": settings["tiny"], "tiny_min_sample_s": settings["tiny_min_sample_s"],
            "memory_in_process": settings["memory"] and settings["quick"], "memory_sizes": settings["sizes"],
            "threads": settings["threads"], "device": settings.get("device", "cpu"),
            "crossover_sizes": settings.get("crossover_sizes") if fw == "torch" else None,
            "implementations": settings.get("implementations", "all"),
        }
        res = run_worker(spec, timeout_s)
        if "error" in res:
            log(f"{fw}: FAILED {res['error']}")
        elif fw == "torch" and settings.get("first_call_size"):
            res["first_call"] = run_first_call(settings, timeout_s)
        elif fw == "tensorflow" and settings.get("schedule_size"):
            res["schedule"] = schedule.run(settings, timeout_s)
        if "error" not in res and fw in checks.CHECK_FRAMEWORKS and settings.get("checks"):
            res["checks"] = checks.run({**settings, "frameworks": [fw]}, timeout_s)
        frameworks[fw] = res

    if settings["memory"] and not settings["quick"]:
        for fw, res in frameworks.items():
            if "error" in res:
                continue
            for size in settings["sizes"]:
                for impl in selected_impls(fw, settings.get("implementations", "all")):
                    rec = run_worker({"task": "memory", "framework": fw, "implementation": impl.key,
                                      "size": list(size), "smoothing": settings["smoothing"],
                                      "threads": settings["threads"], "device": settings.get("device", "cpu")},
                                     timeout_s)
                    rec.setdefault("framework", fw)
                    rec.setdefault("implementation", impl.key)
                    rec.setdefault("size", list(size))
                    rec.setdefault("logits_mib", logits_mib(size))
                    res["memory"].append(rec)
                    log(f"memory {fw:<10} {size_name(size):>12} {impl.key:<16} {_memory_text(rec)}")
    return frameworks


def run_first_call(settings: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """torch: each implementation of ``FIRST_CALL_IMPLS`` in a fresh subprocess whose
    ``FIRST_CALL_CACHES`` are new empty directories, at ``settings["first_call_size"]``."""
    size = [int(n) for n in settings["first_call_size"]]
    results = {}
    for impl in FIRST_CALL_IMPLS:
        with tempfile.TemporaryDirectory(prefix="smoothloss-bench-caches-") as tmp:
            caches = {v: str(Path(tmp, v.lower())) for v in FIRST_CALL_CACHES}
            for d in caches.values():
                os.mkdir(d)
            rec = run_worker({"task": "first_call", "framework": "torch", "implementation": impl.key, "size": size,
                              "smoothing": settings["smoothing"], "threads": settings["threads"],
                              "device": settings.get("device", "cpu")}, timeout_s, env=caches)
        rec.setdefault("implementation", impl.key)
        results[impl.key] = rec
        msg = (f"first call {rec['first_call_s']:.3g} s, steady state {fmt_ms(rec['steady_ms'])} ms"
               if "error" not in rec else f"FAILED {rec['error']}")
        log(f"torch      {size_name(size):>12} fresh process, {impl.key}: {msg}")
    return {"size": size, "calls": FIRST_CALL_CALLS, "steady_calls": FIRST_CALL_STEADY, "results": results}


def failed(frameworks: dict[str, dict[str, Any]]) -> bool:
    """Whether a framework, an implementation or a memory measurement failed."""
    for res in frameworks.values():
        if "error" in res:
            return True
        entries = res["sizes"] + ([res["dispatch"]] if res.get("dispatch") else [])
        for entry in entries + (res["crossover"]["sizes"] if res.get("crossover") else []):
            if any("error" in r for r in entry["results"].values()):
                return True
        if any("error" in m for m in res.get("memory", [])):
            return True
        if res.get("first_call") and any("error" in r for r in res["first_call"]["results"].values()):
            return True
        if schedule.failed(res.get("schedule")) or checks.failed(res.get("checks")):
            return True
    return False
