"""The dense harness: smoothloss against each framework's own label-smoothed cross-entropy.

For every installed framework and every size B×K (float32 logits, integer labels,
``label_smoothing=ε``, mean reduction) this times one forward+backward step with respect
to the logits of

* torch: ``smoothloss.cross_entropy`` + ``.backward()``, ``F.cross_entropy(label_smoothing=ε)``
  and timm's ``LabelSmoothingCrossEntropy`` formula written out (timm is not imported);
* jax: ``smoothloss.cross_entropy`` and optax (``softmax_cross_entropy`` on
  ``smooth_labels(one_hot(y))``), both as ``jax.jit(jax.value_and_grad(...))``;
* tensorflow: ``smoothloss.cross_entropy``, Keras ``CategoricalCrossentropy`` (on
  ``tf.one_hot(y)``, built inside the step) and Keras ``SparseCategoricalCrossentropy``
  (which has no label smoothing in Keras 3.15), each under ``tf.function`` with a
  ``GradientTape``.

Timing: one subprocess per framework; within a size the implementations are warmed up,
then sampled interleaved (A, B, C, B, C, A, ...), each sample averaging enough steps to
last ``min_sample_s``; the median and the spread (min/max, quartiles) are reported in
milliseconds with ratios smoothloss ÷ each built-in and ÷ the fastest built-in. A tiny
batch (32×10) is timed eagerly (torch eager, jax jitted, TensorFlow eager) for the
dispatch overhead.

Memory: each (framework, implementation, size) runs in a fresh subprocess (in ``--quick``
mode: inside the timing subprocess). After a warm-up on a small batch, the full-size
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
"""

from __future__ import annotations

import gc
import importlib.util
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothloss.bench.common import (
    MIB, fmt_ratio, framework_info, hwm_resettable, log, malloc_trim, measured_step, ratio, ru_maxrss, run_worker,
    size_name,
)

DEFAULT_SIZES = ((4096, 10), (4096, 1000), (1024, 32000), (256, 128256))
QUICK_SIZES = ((64, 10), (256, 1000))
TINY = (32, 10)


@dataclass(frozen=True)
class Impl:
    """One implementation of the smoothed loss in one framework."""

    key: str
    label: str
    smoothing: bool  # computes the label-smoothed loss (False: Keras SCCE, plain CE)
    builtin: bool  # the framework's own (False: smoothloss)
    main: bool = False  # the built-in the "≤ 0.5× the built-in" targets refer to


IMPLS: dict[str, tuple[Impl, ...]] = {
    "torch": (
        Impl("smoothloss", "smoothloss.cross_entropy", True, False),
        Impl("F.cross_entropy", "torch F.cross_entropy(label_smoothing)", True, True, main=True),
        Impl("timm", "timm LabelSmoothingCrossEntropy formula", True, True),
    ),
    "jax": (
        Impl("smoothloss", "smoothloss.cross_entropy (jit)", True, False),
        Impl("optax", "optax smooth_labels + softmax_cross_entropy (jit)", True, True, main=True),
    ),
    "tensorflow": (
        Impl("smoothloss", "smoothloss.cross_entropy (tf.function)", True, False),
        Impl("keras.CCE", "Keras CategoricalCrossentropy on one-hot (tf.function)", True, True, main=True),
        Impl("keras.SCCE", "Keras SparseCategoricalCrossentropy, NO smoothing (tf.function)", False, True),
    ),
}
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


def logits_mib(size: Sequence[int]) -> float:
    return size[0] * size[1] * 4 / MIB


def installed(framework: str) -> bool:
    extra = {"jax": ("optax",), "tensorflow": ("keras",)}.get(framework, ())
    return all(importlib.util.find_spec(m) is not None for m in (framework, *extra))


def _stats(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "median_ms": float(med), "min_ms": float(a.min()), "max_ms": float(a.max()),
        "q1_ms": float(q1), "q3_ms": float(q3),
    }


def _inputs(size: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    b, k = size
    rng = np.random.default_rng(seed + 1000003 * b + k)
    x = rng.standard_normal((b, k), dtype=np.float32)
    y = rng.integers(0, k, size=(b,), dtype=np.int64)
    return x, y


# --------------------------------------------------------------------------- steps
#
# A "step" is a zero-argument callable that runs one forward+backward with respect to
# the logits to completion and returns the loss; ``reset()`` drops whatever the step
# keeps alive between calls (torch's ``.grad``).


class _Steps:
    def __init__(self, steps: dict[str, Callable[[], Any]], to_float: Callable[[Any], float],
                 reset: Callable[[], None] = lambda: None, extra: dict[str, Callable[[], Any]] | None = None):
        self.steps = steps
        self.to_float = to_float
        self.reset = reset
        self.extra = extra or {}


def _torch_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool) -> _Steps:
    import torch
    import torch.nn.functional as F

    import smoothloss

    x = torch.from_numpy(x_np).requires_grad_()
    y = torch.from_numpy(y_np)

    def timm_formula(x: Any, y: Any) -> Any:  # timm/loss/cross_entropy.py LabelSmoothingCrossEntropy
        logprobs = F.log_softmax(x, dim=-1)
        nll_loss = -logprobs.gather(dim=-1, index=y.unsqueeze(1)).squeeze(1)
        smooth_loss = -logprobs.mean(dim=-1)
        loss = (1.0 - eps) * nll_loss + eps * smooth_loss
        return loss.mean()

    fns = {
        "smoothloss": lambda x, y: smoothloss.cross_entropy(x, y, label_smoothing=eps),
        "F.cross_entropy": lambda x, y: F.cross_entropy(x, y, label_smoothing=eps),
        "timm": timm_formula,
    }

    def make(fn: Callable[[Any, Any], Any]) -> Callable[[], Any]:
        def step() -> Any:
            x.grad = None
            loss = fn(x, y)
            loss.backward()
            return loss

        return step

    def reset() -> None:
        x.grad = None

    return _Steps({k: make(f) for k, f in fns.items()}, lambda v: float(v.detach()), reset)


def _jax_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool) -> _Steps:
    import jax
    import jax.numpy as jnp
    import optax

    import smoothloss

    x = jnp.asarray(x_np)
    y = jnp.asarray(y_np.astype(np.int32))
    k = x_np.shape[-1]

    def sl(x: Any, y: Any) -> Any:
        return smoothloss.cross_entropy(x, y, label_smoothing=eps)

    def ox(x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy(x, optax.smooth_labels(jax.nn.one_hot(y, k), eps)).mean()

    jitted = {"smoothloss": jax.jit(jax.value_and_grad(sl)), "optax": jax.jit(jax.value_and_grad(ox))}

    def make(f: Any) -> Callable[[], Any]:
        def step() -> Any:
            out = f(x, y)
            jax.block_until_ready(out)
            return out[0]

        return step

    def analysis(key: str) -> Callable[[], Any]:
        return lambda: jitted[key].lower(x, y).compile().memory_analysis()

    return _Steps({k_: make(f) for k_, f in jitted.items()}, float, extra={k_: analysis(k_) for k_ in jitted})


def _tf_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool) -> _Steps:
    import keras
    import tensorflow as tf

    import smoothloss

    x = tf.constant(x_np)
    y = tf.constant(y_np)
    k = x_np.shape[-1]
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fns = {
        "smoothloss": lambda x, y: smoothloss.cross_entropy(x, y, label_smoothing=eps),
        "keras.CCE": lambda x, y: cce(tf.one_hot(y, k), x),
        "keras.SCCE": lambda x, y: scce(y, x),
    }

    def make(fn: Callable[[Any, Any], Any]) -> Callable[[], Any]:
        def grad_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = fn(x, y)
            return loss, tape.gradient(loss, x)

        g = grad_step if eager else tf.function(grad_step)

        def step() -> Any:
            loss, _grad = g(x, y)
            return loss

        return step

    return _Steps({k_: make(f) for k_, f in fns.items()}, lambda v: float(v.numpy()))


STEP_BUILDERS = {"torch": _torch_steps, "jax": _jax_steps, "tensorflow": _tf_steps}


# --------------------------------------------------------------------------- timing


def _time_size(framework: str, size: tuple[int, int], eps: float, repeats: int, warmup: int,
               min_sample_s: float, eager: bool) -> dict[str, dict[str, Any]]:
    """Warm up, calibrate, then sample every implementation interleaved."""
    x_np, y_np = _inputs(size)
    steps = STEP_BUILDERS[framework](x_np, y_np, eps, eager)
    impls = [i for i in IMPLS[framework] if i.key in steps.steps]
    out: dict[str, dict[str, Any]] = {}
    inner: dict[str, int] = {}
    for impl in impls:
        step = steps.steps[impl.key]
        rec: dict[str, Any] = {"implementation": impl.key}
        out[impl.key] = rec
        try:
            t0 = time.perf_counter()
            loss = step()
            rec["first_call_ms"] = (time.perf_counter() - t0) * 1e3
            rec["loss"] = steps.to_float(loss)
            for _ in range(max(0, warmup - 1)):
                step()
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
    ref = out.get("smoothloss", {}).get("loss")
    for impl in impls:
        rec = out[impl.key]
        if ref is not None and "loss" in rec and impl.smoothing:
            rec["matches_smoothloss"] = bool(abs(rec["loss"] - ref) <= 1e-4 * max(1.0, abs(ref)))
            if not rec["matches_smoothloss"]:
                log(f"{framework} {size_name(size)} {impl.key}: loss {rec['loss']} differs from smoothloss {ref}")
    return out


def _worker_time(spec: dict[str, Any]) -> dict[str, Any]:
    fw = spec["framework"]
    result: dict[str, Any] = {"framework": fw, "info": framework_info(fw), "sizes": [], "dispatch": None, "memory": []}
    for size in spec["sizes"]:
        size = tuple(size)
        t0 = time.perf_counter()
        recs = _time_size(fw, size, spec["smoothing"], spec["repeats"], spec["warmup"], spec["min_sample_s"], False)
        result["sizes"].append({"size": list(size), "results": recs})
        meds = ", ".join(f"{k} {v['median_ms']:.3g} ms" for k, v in recs.items() if "median_ms" in v)
        log(f"{fw:<10} {size_name(size):>12}: {meds} ({time.perf_counter() - t0:.1f}s)")
    if spec.get("tiny"):
        recs = _time_size(fw, TINY, spec["smoothing"], spec["repeats"], spec["warmup"],
                          spec["tiny_min_sample_s"], True)
        result["dispatch"] = {"size": list(TINY), "mode": EAGER_NOTE[fw], "results": recs}
        meds = ", ".join(f"{k} {v['median_ms'] * 1e3:.0f} µs" for k, v in recs.items() if "median_ms" in v)
        log(f"{fw:<10} {size_name(TINY):>12} ({EAGER_NOTE[fw]}): {meds}")
    if spec.get("memory_in_process"):
        for size in spec["memory_sizes"]:
            for impl in IMPLS[fw]:
                result["memory"].append(_measure_memory(fw, impl.key, tuple(size), spec["smoothing"], fresh=False))
    return result


# --------------------------------------------------------------------------- memory


def _measure_memory(framework: str, key: str, size: tuple[int, int], eps: float, fresh: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "framework": framework, "implementation": key, "size": list(size), "logits_mib": logits_mib(size),
        "fresh_process": fresh,
    }
    try:
        build = STEP_BUILDERS[framework]
        small = _inputs((min(size[0], 16), size[1]), seed=1)
        warm = build(*small, eps, False)
        warm.steps[key]()
        warm.steps[key]()
        warm.reset()
        del warm, small
        x_np, y_np = _inputs(size)
        steps = build(x_np, y_np, eps, False)
        step = steps.steps[key]
        gc.collect()
        malloc_trim()
        ru0 = ru_maxrss()
        loss = step()  # the first full-size step: compiles / traces for this shape
        del loss
        steps.reset()
        rec["extra_mib_first_step_ru_maxrss"] = (ru_maxrss() - ru0) / MIB
        if key in steps.extra:  # jax: XLA's own account of the compiled step
            ma = steps.extra[key]()
            if ma is not None:
                rec["xla_temp_mib"] = ma.temp_size_in_bytes / MIB
                rec["xla_output_mib"] = ma.output_size_in_bytes / MIB
        if hwm_resettable():
            extras = []
            for _ in range(2):  # two measured steps, the smaller counts (a stray allocation is not the step's)
                for _attempt in range(3):  # another thread's allocation can void a reset: step again
                    loss, _, base, peak = measured_step(step)
                    del loss
                    steps.reset()
                    if base is not None and peak is not None:
                        break
                else:
                    raise RuntimeError("the high-water-mark reset did not hold in 3 tries")
                extras.append(max(0.0, (peak - base) / MIB))
                if len(extras) == 1 or extras[-1] < min(extras[:-1]):
                    rec["baseline_mib"], rec["peak_mib"] = base / MIB, peak / MIB
            rec["method"] = "VmHWM reset before a full-size step after the first, minus VmRSS at the reset; min of 2"
            rec["extra_mib_each"] = extras
            rec["extra_mib"] = min(extras)
        elif fresh:
            rec["method"] = "ru_maxrss growth over the first full-size step (includes compilation)"
            rec["extra_mib"] = rec["extra_mib_first_step_ru_maxrss"]
        else:
            rec["method"] = None
            rec["extra_mib"] = None
            rec["error"] = "no high-water-mark reset on this platform; in-process measurement skipped"
        if rec["extra_mib"] is not None:
            rec["extra_over_logits"] = rec["extra_mib"] / rec["logits_mib"]
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    return rec


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``task: "time"`` and ``task: "memory"`` workers of ``python -m smoothloss.bench --worker``."""
    if spec["task"] == "time":
        return _worker_time(spec)
    return _measure_memory(spec["framework"], spec["implementation"], tuple(spec["size"]), spec["smoothing"], True)


# --------------------------------------------------------------------------- runs (parent)


def run(settings: dict[str, Any], timeout_s: float) -> dict[str, dict[str, Any]]:
    """One timing subprocess per framework of ``settings["frameworks"]``, then (unless quick or
    ``settings["memory"]`` is off) one memory subprocess per framework × implementation × size.
    Returns the results per framework (``{"error": ...}`` for a framework whose worker failed)."""
    frameworks: dict[str, dict[str, Any]] = {}
    for fw in settings["frameworks"]:
        spec = {
            "task": "time", "framework": fw, "sizes": settings["sizes"], "smoothing": settings["smoothing"],
            "repeats": settings["repeats"], "warmup": settings["warmup"], "min_sample_s": settings["min_sample_s"],
            "tiny": settings["tiny"], "tiny_min_sample_s": settings["tiny_min_sample_s"],
            "memory_in_process": settings["memory"] and settings["quick"], "memory_sizes": settings["sizes"],
            "threads": settings["threads"],
        }
        res = run_worker(spec, timeout_s)
        if "error" in res:
            log(f"{fw}: FAILED {res['error']}")
        frameworks[fw] = res

    if settings["memory"] and not settings["quick"]:
        for fw, res in frameworks.items():
            if "error" in res:
                continue
            for size in settings["sizes"]:
                for impl in IMPLS[fw]:
                    rec = run_worker({"task": "memory", "framework": fw, "implementation": impl.key,
                                      "size": list(size), "smoothing": settings["smoothing"],
                                      "threads": settings["threads"]}, timeout_s)
                    rec.setdefault("framework", fw)
                    rec.setdefault("implementation", impl.key)
                    rec.setdefault("size", list(size))
                    rec.setdefault("logits_mib", logits_mib(size))
                    res["memory"].append(rec)
                    msg = (f"{rec['extra_mib']:.2f} MiB beyond inputs (logits {logits_mib(size):.2f} MiB)"
                           if rec.get("extra_mib") is not None else f"FAILED {rec.get('error')}")
                    log(f"memory {fw:<10} {size_name(size):>12} {impl.key:<16} {msg}")
    return frameworks


def failed(frameworks: dict[str, dict[str, Any]]) -> bool:
    """Whether a framework, an implementation or a memory measurement failed."""
    for res in frameworks.values():
        if "error" in res:
            return True
        for entry in res["sizes"] + ([res["dispatch"]] if res.get("dispatch") else []):
            if any("error" in r for r in entry["results"].values()):
                return True
        if any("error" in m for m in res.get("memory", [])):
            return True
    return False


# --------------------------------------------------------------------------- report


def _impl(framework: str, key: str) -> Impl:
    return next(i for i in IMPLS[framework] if i.key == key)


def summarise(frameworks: dict[str, Any]) -> dict[str, Any]:
    """Ratios per framework and size, and the issue's targets, met or missed."""
    ratios, dispatch, targets = [], [], []
    mem_allowance = 1.0  # MiB: RSS page granularity, thread stacks, O(B) row statistics
    for fw, res in frameworks.items():
        if "error" in res:
            continue
        mem = {(m["implementation"], tuple(m["size"])): m for m in res.get("memory", [])}
        for entry in res["sizes"]:
            size = tuple(entry["size"])
            recs = entry["results"]
            sl = recs.get("smoothloss", {}).get("median_ms")
            builtins = {k: v["median_ms"] for k, v in recs.items() if _impl(fw, k).builtin and "median_ms" in v}
            fastest = min(builtins, key=builtins.get) if builtins else None
            main_key = next(i.key for i in IMPLS[fw] if i.main)
            row = {
                "framework": fw, "size": list(size),
                "vs": {k: ratio(sl, v) for k, v in builtins.items()},
                "fastest_builtin": fastest,
                "vs_fastest": ratio(sl, builtins.get(fastest)) if fastest else None,
                "vs_main": ratio(sl, builtins.get(main_key)),
                "main_builtin": main_key,
            }
            sm = mem.get(("smoothloss", size), {}).get("extra_mib")
            bm = {k: mem.get((k, size), {}).get("extra_mib") for k in builtins}
            bm = {k: v for k, v in bm.items() if v is not None}
            row["memory_extra_mib"] = sm
            row["memory_min_builtin_mib"] = min(bm.values()) if bm else None
            row["memory_main_builtin_mib"] = bm.get(main_key)
            ratios.append(row)
            name = f"{fw} {size_name(size)}"
            if row["vs_fastest"] is not None:
                targets.append({
                    "target": "smoothloss ≤ 1.0× the fastest built-in", "where": f"{name} (vs {fastest})",
                    "value": row["vs_fastest"], "limit": 1.0, "met": row["vs_fastest"] <= 1.0,
                })
            if size == (1024, 32000) and row["vs_main"] is not None:
                targets.append({
                    "target": "smoothloss ≤ 0.5× the built-in at 1024×32000", "where": f"{name} (vs {main_key})",
                    "value": row["vs_main"], "limit": 0.5, "met": row["vs_main"] <= 0.5,
                })
            if fw == "torch" and size == (4096, 1000) and row["vs_main"] is not None:
                targets.append({
                    "target": "torch 4096×1000: smoothloss ≤ 0.5× F.cross_entropy", "where": name,
                    "value": row["vs_main"], "limit": 0.5, "met": row["vs_main"] <= 0.5,
                })
            if sm is not None:
                limit = logits_mib(size) + mem_allowance + 64 * size[0] / MIB
                targets.append({
                    "target": "extra memory ≤ gradient (= logits) + O(B)", "where": name,
                    "value": sm, "limit": limit, "unit": "MiB", "met": sm <= limit,
                })
                if main_key in bm:  # RSS noise: half a MiB or 2% of the logits
                    tol = max(0.5, 0.02 * logits_mib(size))
                    targets.append({
                        "target": "extra memory ≤ the built-in's", "where": f"{name} (vs {main_key})",
                        "value": sm, "limit": bm[main_key] + tol, "unit": "MiB", "met": sm <= bm[main_key] + tol,
                    })
        d = res.get("dispatch")
        if d:
            recs = d["results"]
            sl = recs.get("smoothloss", {}).get("median_ms")
            main_key = next(i.key for i in IMPLS[fw] if i.main)
            row = {
                "framework": fw, "mode": d["mode"],
                "vs": {k: ratio(sl, v.get("median_ms")) for k, v in recs.items() if _impl(fw, k).builtin},
                "vs_main": ratio(sl, recs.get(main_key, {}).get("median_ms")), "main_builtin": main_key,
            }
            dispatch.append(row)
            if row["vs_main"] is not None:
                targets.append({
                    "target": "tiny batch 32×10 dispatch ≤ 1.5× the built-in", "where": f"{d['mode']} (vs {main_key})",
                    "value": row["vs_main"], "limit": 1.5, "met": row["vs_main"] <= 1.5,
                })
    return {"ratios": ratios, "dispatch": dispatch, "targets": targets,
            "memory_allowance_mib": mem_allowance}


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_mib(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The frameworks' results as Markdown: timings with memory, ratios and targets, dispatch."""
    lines: list[str] = []
    eps = report["settings"]["smoothing"]
    lines += [
        f"Forward+backward with respect to float32 logits, integer labels, label_smoothing={eps}, mean "
        "reduction. Median of the interleaved samples; spread as min–max and interquartile range (IQR). "
        "\"smoothloss ÷ this\" < 1 means smoothloss is faster. Extra memory: peak resident set of one step "
        "beyond the inputs (logits, labels) and the warmed-up framework; the gradient alone is 1× logits.",
        "",
        "| framework | B×K (logits MiB) | implementation | median ms | min–max ms | IQR ms | smoothloss ÷ this "
        "| extra memory MiB (÷ logits) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for fw, res in report["frameworks"].items():
        if "error" in res:
            lines.append(f"| {fw} | — | failed: {res['error'][:200]} | | | | | |")
            continue
        mem = {(m["implementation"], tuple(m["size"])): m for m in res.get("memory", [])}
        for entry in res["sizes"]:
            size = tuple(entry["size"])
            sl = entry["results"].get("smoothloss", {}).get("median_ms")
            for impl in IMPLS[fw]:
                rec = entry["results"].get(impl.key)
                if rec is None:
                    continue
                if "error" in rec:
                    lines.append(f"| {fw} | {size_name(size)} | {impl.label} | failed: {rec['error'][:120]} | | | | |")
                    continue
                m = mem.get((impl.key, size), {})
                if m.get("extra_mib") is not None:
                    memtxt = f"{_fmt_mib(m['extra_mib'])} ({m['extra_over_logits']:.2f}×)"
                elif m.get("error"):
                    memtxt = "failed"
                else:
                    memtxt = "—"
                rel = "1.00×" if impl.key == "smoothloss" else fmt_ratio(ratio(sl, rec["median_ms"]))
                lines.append(
                    f"| {fw} | {size_name(size)} ({logits_mib(size):.2f}) | {impl.label} | {_fmt_ms(rec['median_ms'])} "
                    f"| {_fmt_ms(rec['min_ms'])}–{_fmt_ms(rec['max_ms'])} | {_fmt_ms(rec['q1_ms'])}–{_fmt_ms(rec['q3_ms'])} "
                    f"| {rel} | {memtxt} |"
                )
    summary = report["summary"]
    if summary["ratios"]:
        lines += [
            "",
            "smoothloss ÷ the built-ins, per framework and size (the fastest built-in is named):",
            "",
            "| framework | B×K | smoothloss ÷ fastest built-in | smoothloss ÷ main built-in "
            "| extra MiB: smoothloss / main built-in / least built-in |",
            "|---|---|---:|---:|---:|",
        ]
        for r in summary["ratios"]:
            fastest = f"{fmt_ratio(r['vs_fastest'])} ({r['fastest_builtin']})" if r["fastest_builtin"] else "—"
            lines.append(
                f"| {r['framework']} | {size_name(r['size'])} | {fastest} | {fmt_ratio(r['vs_main'])} ({r['main_builtin']}) "
                f"| {_fmt_mib(r['memory_extra_mib'])} / {_fmt_mib(r['memory_main_builtin_mib'])} "
                f"/ {_fmt_mib(r['memory_min_builtin_mib'])} |"
            )
    if summary["dispatch"]:
        lines += [
            "",
            f"Tiny batch {size_name(TINY)} (dispatch overhead; torch eager, jax jitted, TensorFlow eager):",
            "",
            "| framework | mode | implementation | median µs | min–max µs | smoothloss ÷ this |",
            "|---|---|---|---:|---:|---:|",
        ]
        for fw, res in report["frameworks"].items():
            d = res.get("dispatch") if "error" not in res else None
            if not d:
                continue
            sl = d["results"].get("smoothloss", {}).get("median_ms")
            for impl in IMPLS[fw]:
                rec = d["results"].get(impl.key)
                if rec is None:
                    continue
                if "error" in rec:
                    lines.append(f"| {fw} | {d['mode']} | {impl.label} | failed: {rec['error'][:120]} | | |")
                    continue
                rel = "1.00×" if impl.key == "smoothloss" else fmt_ratio(ratio(sl, rec["median_ms"]))
                label = impl.label.replace(" (tf.function)", "").replace(" (jit)", "")
                lines.append(
                    f"| {fw} | {d['mode']} | {label} | {rec['median_ms'] * 1e3:.0f} "
                    f"| {rec['min_ms'] * 1e3:.0f}–{rec['max_ms'] * 1e3:.0f} | {rel} |"
                )
    if summary["targets"]:
        lines += [
            "",
            "Targets of issue 5 (ratios from this one run):",
            "",
            "| target | where | measured | limit | met |",
            "|---|---|---:|---:|---|",
        ]
        for t in summary["targets"]:
            unit = t.get("unit")
            val = f"{t['value']:.2f} {unit}" if unit else f"{t['value']:.3f}×"
            lim = f"{t['limit']:.2f} {unit}" if unit else f"{t['limit']:.1f}×"
            lines.append(f"| {t['target']} | {t['where']} | {val} | {lim} | {'yes' if t['met'] else '**no**'} |")
    notes = [
        "Keras CategoricalCrossentropy gets `tf.one_hot(y)` built inside the step, as optax gets `jax.nn.one_hot(y)`: "
        "all implementations start from integer labels.",
        "Keras SparseCategoricalCrossentropy has no label smoothing in Keras 3.15: it computes a different (unsmoothed) "
        "loss and is listed for speed only.",
        "The timm row is timm's LabelSmoothingCrossEntropy formula written out in torch (log_softmax, gather, mean).",
    ]
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> str | None:
    """Time against K, one line per implementation, one panel per framework; None if no matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fws = [fw for fw, res in report["frameworks"].items() if "error" not in res and res["sizes"]]
    if not fws:
        return None
    fig = Figure(figsize=(5.2 * len(fws), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(fws), squeeze=False)[0]
    for ax, fw in zip(axes, fws):
        entries = sorted(report["frameworks"][fw]["sizes"], key=lambda e: (e["size"][1], e["size"][0]))
        for impl in IMPLS[fw]:
            pts = [(e["size"], e["results"].get(impl.key, {})) for e in entries]
            pts = [(s, r) for s, r in pts if "median_ms" in r]
            if not pts:
                continue
            ks = [s[1] for s, _ in pts]
            med = np.array([r["median_ms"] for _, r in pts])
            lo = med - np.array([r["min_ms"] for _, r in pts])
            hi = np.array([r["max_ms"] for _, r in pts]) - med
            style = dict(lw=2.4, marker="o") if impl.key == "smoothloss" else dict(lw=1.3, marker="s", ls="--")
            ax.errorbar(ks, med, yerr=[lo, hi], capsize=3, label=impl.label, **style)
        ks_all = [e["size"][1] for e in entries]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ks_all, [f"K={e['size'][1]}\nB={e['size'][0]}" for e in entries], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("classes K (batch B below)")
        ax.set_ylabel("forward+backward, ms (median, min–max)")
        ax.set_title(fw)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(f"smoothed cross-entropy, float32, ε={report['settings']['smoothing']} — "
                 f"{report['machine']['cpu_model']} ({report['machine']['cpus_usable']} CPUs)", fontsize=9)
    fig.savefig(path, dpi=110)
    return str(path)


