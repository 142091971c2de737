"""The dense harness: smoothloss against each framework's own label-smoothed cross-entropy.

For every installed framework and every size B×K (float32 logits, integer labels,
``label_smoothing=ε``, mean reduction) this times one forward+backward step with respect
to the logits of

* torch: ``smoothloss.cross_entropy`` + ``.backward()`` in the default compile mode (compiled
  kernels from ``COMPILE_THRESHOLD`` logits up) and with ``set_compile_mode("never")`` (the
  eager kernels), ``F.cross_entropy(label_smoothing=ε)`` and timm's
  ``LabelSmoothingCrossEntropy`` formula written out (timm is not imported);
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
compiled kernels win is the threshold the default mode should switch at.

``--device cuda`` puts the arrays on the GPU (torch synchronizes in every step, jax blocks
on its outputs); memory is then the device allocator's peak (torch, TensorFlow) or XLA's
memory analysis of the compiled step (jax).

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
    size_name, threads_text,
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
    builtin: bool  # the framework's own loss (False: smoothloss, the floor)
    main: bool = False  # the built-in that the speed targets are ratios to
    floor: bool = False  # the framework's softmax of the logits: no loss, the least a step can cost


FLOOR_SUFFIX = ", 2 reads + 1 write of the logits"
IMPLS: dict[str, tuple[Impl, ...]] = {
    "torch": (
        Impl("smoothloss", "smoothloss.cross_entropy", True, False),
        Impl("smoothloss.eager", "smoothloss.cross_entropy, eager kernels", True, False),
        Impl("F.cross_entropy", "torch F.cross_entropy(label_smoothing)", True, True, main=True),
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
                 reset: Callable[[], None] = lambda: None, extra: dict[str, Callable[[], Any]] | None = None,
                 compiled_calls: Callable[[], int] | None = None,
                 device_peak: Callable[[Callable[[], Any]], tuple[Any, float, float]] | None = None):
        self.steps = steps
        self.to_float = to_float
        self.reset = reset
        self.extra = extra or {}
        self.compiled_calls = compiled_calls  # torch: how many calls ran the compiled kernels so far
        self.device_peak = device_peak  # off the CPU: run a step -> (output, bytes before, peak bytes)


def _device_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


def _torch_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool, device: str = "cpu") -> _Steps:
    import torch
    import torch.nn.functional as F

    import smoothloss
    from smoothloss.backends.torch import COMPILED

    dev = torch.device(device if ":" in device or device == "cpu" else f"{device}:0")
    on_gpu = dev.type != "cpu"
    x = torch.from_numpy(x_np).to(dev).requires_grad_()
    y = torch.from_numpy(y_np).to(dev)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(dev)

    def timm_formula(x: Any, y: Any) -> Any:  # timm/loss/cross_entropy.py LabelSmoothingCrossEntropy
        logprobs = F.log_softmax(x, dim=-1)
        nll_loss = -logprobs.gather(dim=-1, index=y.unsqueeze(1)).squeeze(1)
        smooth_loss = -logprobs.mean(dim=-1)
        loss = (1.0 - eps) * nll_loss + eps * smooth_loss
        return loss.mean()

    def sl(x: Any, y: Any) -> Any:
        return smoothloss.cross_entropy(x, y, label_smoothing=eps)

    def make(fn: Callable[[Any, Any], Any], mode: str | None = None) -> Callable[[], Any]:
        """One forward+backward; with ``mode``, smoothloss's compile mode for the step, restored after."""

        def step() -> Any:
            x.grad = None
            previous = None if mode is None else smoothloss.set_compile_mode(mode)
            try:
                loss = fn(x, y)
                loss.backward()
            finally:
                if previous is not None:
                    smoothloss.set_compile_mode(previous)
            sync()
            return loss

        return step

    def floor() -> Any:
        with torch.no_grad():
            out = torch.softmax(x, -1)
        sync()
        return out

    def reset() -> None:
        x.grad = None

    def cuda_peak(run: Callable[[], Any]) -> tuple[Any, float, float]:
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = run()
        return out, float(before), float(torch.cuda.max_memory_allocated(dev))

    steps = {
        "smoothloss": make(sl),
        "smoothloss.eager": make(sl, "never"),
        "smoothloss.compiled": make(sl, "always"),
        "F.cross_entropy": make(lambda x, y: F.cross_entropy(x, y, label_smoothing=eps)),
        "timm": make(timm_formula),
        "floor": floor,
    }
    return _Steps(steps, lambda v: float(v.detach()), reset, compiled_calls=lambda: COMPILED.calls,
                  device_peak=cuda_peak if on_gpu else None)


def _jax_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool, device: str = "cpu") -> _Steps:
    import jax
    import jax.numpy as jnp
    import optax

    import smoothloss

    dev = jax.devices("cpu" if device == "cpu" else "gpu")[_device_index(device)]
    x = jax.device_put(jnp.asarray(x_np), dev)
    y = jax.device_put(jnp.asarray(y_np.astype(np.int32)), dev)
    k = x_np.shape[-1]

    def sl(x: Any, y: Any) -> Any:
        return smoothloss.cross_entropy(x, y, label_smoothing=eps)

    def ox(x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy(x, optax.smooth_labels(jax.nn.one_hot(y, k), eps)).mean()

    jitted = {"smoothloss": jax.jit(jax.value_and_grad(sl)), "optax": jax.jit(jax.value_and_grad(ox))}
    floor = jax.jit(jax.nn.softmax)

    def make(f: Any) -> Callable[[], Any]:
        def step() -> Any:
            out = f(x, y)
            jax.block_until_ready(out)
            return out[0]

        return step

    def floor_step() -> Any:
        return jax.block_until_ready(floor(x))

    def analysis(key: str) -> Callable[[], Any]:
        return lambda: jitted[key].lower(x, y).compile().memory_analysis()

    analyses = {k_: analysis(k_) for k_ in jitted}
    analyses["floor"] = lambda: floor.lower(x).compile().memory_analysis()
    return _Steps({**{k_: make(f) for k_, f in jitted.items()}, "floor": floor_step}, float, extra=analyses)


def _tf_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool, device: str = "cpu") -> _Steps:
    import keras
    import tensorflow as tf

    import smoothloss

    on_gpu = device != "cpu"
    where = f"/GPU:{_device_index(device)}" if on_gpu else "/CPU:0"
    with tf.device(where):
        x = tf.identity(tf.constant(x_np))
        y = tf.identity(tf.constant(y_np))
    k = x_np.shape[-1]
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fns = {
        "smoothloss": lambda x, y: smoothloss.cross_entropy(x, y, label_smoothing=eps),
        "keras.CCE": lambda x, y: cce(tf.one_hot(y, k), x),
        "keras.SCCE": lambda x, y: scce(y, x),
    }

    def sync() -> None:
        if on_gpu:
            tf.test.experimental.sync_devices()

    def make(fn: Callable[[Any, Any], Any]) -> Callable[[], Any]:
        def grad_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = fn(x, y)
            return loss, tape.gradient(loss, x)

        g = grad_step if eager else tf.function(grad_step)

        def step() -> Any:
            with tf.device(where):
                loss, _grad = g(x, y)
            sync()
            return loss

        return step

    softmax = tf.nn.softmax if eager else tf.function(tf.nn.softmax)

    def floor() -> Any:
        with tf.device(where):
            out = softmax(x)
        sync()
        return out

    def gpu_peak(run: Callable[[], Any]) -> tuple[Any, float, float]:
        name = where.strip("/")
        sync()
        tf.config.experimental.reset_memory_stats(name)
        before = tf.config.experimental.get_memory_info(name)["current"]
        out = run()
        return out, float(before), float(tf.config.experimental.get_memory_info(name)["peak"])

    return _Steps({**{k_: make(f) for k_, f in fns.items()}, "floor": floor}, lambda v: float(v.numpy()),
                  device_peak=gpu_peak if on_gpu else None)


STEP_BUILDERS = {"torch": _torch_steps, "jax": _jax_steps, "tensorflow": _tf_steps}


# --------------------------------------------------------------------------- timing


def _time_size(framework: str, size: tuple[int, int], eps: float, repeats: int, warmup: int,
               min_sample_s: float, eager: bool, device: str = "cpu",
               impls: Sequence[Impl] | None = None) -> dict[str, dict[str, Any]]:
    """Warm up, calibrate, then sample every implementation (default: ``IMPLS[framework]``) interleaved."""
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
            if calls is not None:  # torch: whether this step ran smoothloss's compiled kernels
                rec["compiled_kernels"] = steps.compiled_calls() > calls  # type: ignore[misc]
            if not impl.floor:
                rec["loss"] = steps.to_float(loss)
            del loss
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
        from smoothloss.backends.torch import COMPILE_THRESHOLD

        result["compile_threshold"] = COMPILE_THRESHOLD
    timing = (spec["smoothing"], spec["repeats"], spec["warmup"])
    for size in spec["sizes"]:
        size = tuple(size)
        t0 = time.perf_counter()
        recs = _time_size(fw, size, *timing, spec["min_sample_s"], False, device)
        result["sizes"].append({"size": list(size), "results": recs})
        meds = ", ".join(f"{k} {v['median_ms']:.3g} ms" for k, v in recs.items() if "median_ms" in v)
        log(f"{fw:<10} {size_name(size):>12}: {meds} ({time.perf_counter() - t0:.1f}s)")
    if spec.get("tiny"):
        recs = _time_size(fw, TINY, *timing, spec["tiny_min_sample_s"], True, device)
        result["dispatch"] = {"size": list(TINY), "mode": EAGER_NOTE[fw], "results": recs}
        meds = ", ".join(f"{k} {v['median_ms'] * 1e3:.0f} µs" for k, v in recs.items() if "median_ms" in v)
        log(f"{fw:<10} {size_name(TINY):>12} ({EAGER_NOTE[fw]}): {meds}")
    if fw == "torch" and spec.get("crossover_sizes"):
        result["crossover"] = _worker_crossover(spec, timing, device)
    if spec.get("memory_in_process"):
        for size in spec["memory_sizes"]:
            for impl in IMPLS[fw]:
                result["memory"].append(
                    _measure_memory(fw, impl.key, tuple(size), spec["smoothing"], fresh=False, device=device))
    return result


def _worker_crossover(spec: dict[str, Any], timing: tuple[float, int, int], device: str) -> dict[str, Any]:
    """torch: smoothloss with compile mode "always" against "never", interleaved, per size."""
    from smoothloss.backends.torch import COMPILE_THRESHOLD, COMPILED

    entries = []
    for size in spec["crossover_sizes"]:
        size = tuple(size)
        recs = _time_size("torch", size, *timing, spec["min_sample_s"], False, device, CROSSOVER_IMPLS)
        entries.append({"size": list(size), "logits": size[0] * size[1], "results": recs})
        c, e = (recs[i.key].get("median_ms") for i in CROSSOVER_IMPLS)
        log(f"torch      {size_name(size):>12}: compiled {_fmt_ms(c)} ms, eager kernels {_fmt_ms(e)} ms")
    return {"sizes": entries, "threshold": COMPILE_THRESHOLD, "compile_failed": COMPILED.broken}


# --------------------------------------------------------------------------- memory


def _measure_memory(framework: str, key: str, size: tuple[int, int], eps: float, fresh: bool,
                    device: str = "cpu") -> dict[str, Any]:
    rec: dict[str, Any] = {
        "framework": framework, "implementation": key, "size": list(size), "logits_mib": logits_mib(size),
        "fresh_process": fresh, "device": device,
    }
    try:
        build = STEP_BUILDERS[framework]
        small = _inputs((min(size[0], 16), size[1]), seed=1)
        warm = build(*small, eps, False, device)
        warm.steps[key]()
        warm.steps[key]()
        warm.reset()
        del warm, small
        x_np, y_np = _inputs(size)
        steps = build(x_np, y_np, eps, False, device)
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
        if device != "cpu":
            _device_memory(rec, steps, step, device)
        elif hwm_resettable():
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


def _device_memory(rec: dict[str, Any], steps: _Steps, step: Callable[[], Any], device: str) -> None:
    """Off the CPU: the device allocator's peak over a step (torch, TensorFlow; the smaller of two
    steps) or, for jax, XLA's memory analysis of the compiled step (temporaries + outputs)."""
    if steps.device_peak is not None:
        extras = []
        for _ in range(2):
            loss, before, peak = steps.device_peak(step)
            del loss
            steps.reset()
            extras.append(max(0.0, (peak - before) / MIB))
        rec["method"] = f"{device} allocator: peak over a full-size step after the first, minus allocated before it; min of 2"
        rec["extra_mib_each"] = extras
        rec["extra_mib"] = min(extras)
    elif "xla_temp_mib" in rec:
        rec["method"] = "XLA memory analysis of the compiled step: temporaries + outputs"
        rec["extra_mib"] = rec["xla_temp_mib"] + rec["xla_output_mib"]
    else:
        rec["method"] = None
        rec["extra_mib"] = None
        rec["error"] = f"no memory measurement on {device} for {rec['framework']}"


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``task: "time"`` and ``task: "memory"`` workers of ``python -m smoothloss.bench --worker``."""
    if spec["task"] == "time":
        return _worker_time(spec)
    return _measure_memory(spec["framework"], spec["implementation"], tuple(spec["size"]), spec["smoothing"], True,
                           spec.get("device", "cpu"))


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
            "threads": settings["threads"], "device": settings.get("device", "cpu"),
            "crossover_sizes": settings.get("crossover_sizes") if fw == "torch" else None,
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
                                      "threads": settings["threads"], "device": settings.get("device", "cpu")},
                                     timeout_s)
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
        entries = res["sizes"] + ([res["dispatch"]] if res.get("dispatch") else [])
        for entry in entries + (res["crossover"]["sizes"] if res.get("crossover") else []):
            if any("error" in r for r in entry["results"].values()):
                return True
        if any("error" in m for m in res.get("memory", [])):
            return True
    return False


# --------------------------------------------------------------------------- report


def _impl(framework: str, key: str) -> Impl:
    return next(i for i in IMPLS[framework] if i.key == key)


def summarise(frameworks: dict[str, Any]) -> dict[str, Any]:
    """Ratios per framework and size, the compiled kernels' crossover (torch) and the targets, met or missed."""
    ratios, dispatch, targets = [], [], []
    mem_allowance = 1.0  # MiB: RSS page granularity, thread stacks, O(B) row statistics
    crossover = None

    def target(text: str, where: str, value: float, limit: float, unit: str | None = None) -> None:
        t = {"target": text, "where": where, "value": value, "limit": limit, "met": value <= limit}
        targets.append({**t, "unit": unit} if unit else t)

    for fw, res in frameworks.items():
        if "error" in res:
            continue
        mem = {(m["implementation"], tuple(m["size"])): m for m in res.get("memory", [])}
        main_key = next(i.key for i in IMPLS[fw] if i.main)
        for entry in res["sizes"]:
            size = tuple(entry["size"])
            recs = entry["results"]
            med = {k: v["median_ms"] for k, v in recs.items() if "median_ms" in v}
            sl = med.get("smoothloss")
            builtins = {k: v for k, v in med.items() if _impl(fw, k).builtin}
            fastest = min(builtins, key=builtins.get) if builtins else None
            row = {
                "framework": fw, "size": list(size),
                "vs": {k: ratio(sl, v) for k, v in builtins.items()},
                "fastest_builtin": fastest,
                "vs_fastest": ratio(sl, builtins.get(fastest)) if fastest else None,
                "vs_main": ratio(sl, builtins.get(main_key)),
                "main_builtin": main_key,
                "floor_ms": med.get("floor"),
                "over_floor": {k: ratio(v, med.get("floor")) for k, v in med.items()},
                "vs_floor": ratio(sl, med.get("floor")),
                "vs_eager_kernels": ratio(sl, med.get("smoothloss.eager")),
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
                target("smoothloss ≤ 1.0× the fastest built-in", f"{name} (vs {fastest})", row["vs_fastest"], 1.0)
            if size in TARGET_SIZES and fw in MAIN_TARGETS and row["vs_main"] is not None:
                lim = MAIN_TARGETS[fw]
                target(f"smoothloss ≤ {lim:g}× {main_key}", name, row["vs_main"], lim)
            if size == FLOOR_TARGET_SIZE and fw in FLOOR_TARGETS and row["vs_floor"] is not None:
                lim = FLOOR_TARGETS[fw]
                target(f"smoothloss ≤ {lim:g}× the floor (softmax)", name, row["vs_floor"], lim)
            if sm is not None and fw in MEMORY_TARGETS:
                lim = MEMORY_TARGETS[fw]
                limit = lim * logits_mib(size) + mem_allowance + 64 * size[0] / MIB
                target(f"extra memory ≤ {lim:g}× logits + O(B)", name, sm, limit, "MiB")
        d = res.get("dispatch")
        if d:
            recs = d["results"]
            sl = recs.get("smoothloss", {}).get("median_ms")
            row = {
                "framework": fw, "mode": d["mode"],
                "vs": {k: ratio(sl, v.get("median_ms")) for k, v in recs.items() if _impl(fw, k).builtin},
                "vs_main": ratio(sl, recs.get(main_key, {}).get("median_ms")), "main_builtin": main_key,
            }
            dispatch.append(row)
            if row["vs_main"] is not None and fw in TINY_TARGETS:
                lim = TINY_TARGETS[fw]
                target(f"tiny batch {size_name(TINY)} eager ≤ {lim:g}× the built-in", f"{d['mode']} (vs {main_key})",
                       row["vs_main"], lim)
        if res.get("crossover"):
            crossover = compile_crossover(res["crossover"])
    return {"ratios": ratios, "dispatch": dispatch, "targets": targets, "crossover": crossover,
            "memory_allowance_mib": mem_allowance}


def compile_crossover(measured: dict[str, Any]) -> dict[str, Any]:
    """From the torch ladder: compiled ÷ eager per size, and the smallest size (in logits) from
    which the compiled kernels win at that size and at every larger one measured (None: at none)."""
    compiled_key, eager_key = (i.key for i in CROSSOVER_IMPLS)
    rows = []
    for e in sorted(measured["sizes"], key=lambda e: (e["logits"], e["size"][1])):
        c = e["results"].get(compiled_key, {})
        rows.append({"size": e["size"], "logits": e["logits"], "compiled_ms": c.get("median_ms"),
                     "eager_ms": e["results"].get(eager_key, {}).get("median_ms"),
                     "compiled_first_call_ms": c.get("first_call_ms")})
        rows[-1]["compiled_over_eager"] = ratio(rows[-1]["compiled_ms"], rows[-1]["eager_ms"])
    at = None
    for i in range(len(rows)):
        rest = [r["compiled_over_eager"] for r in rows[i:]]
        if all(v is not None and v < 1.0 for v in rest):
            at = rows[i]
            break
    return {"sizes": rows, "threshold": measured.get("threshold"), "compile_failed": measured.get("compile_failed"),
            "crossover_size": at["size"] if at else None, "crossover_logits": at["logits"] if at else None}


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


def _impl_label(impl: Impl, rec: dict[str, Any]) -> str:
    """The implementation's label; torch's default smoothloss row says when it ran the compiled kernels."""
    return impl.label + (" [compiled]" if impl.key == "smoothloss" and rec.get("compiled_kernels") else "")


def markdown(report: dict[str, Any]) -> str:
    """The frameworks' results as Markdown: timings with memory, ratios, the torch compiled-kernels
    crossover, the tiny batch and the targets."""
    lines: list[str] = []
    eps = report["settings"]["smoothing"]
    device = report["settings"].get("device", "cpu")
    lines += [
        f"Forward+backward with respect to float32 logits on the {device.upper() if device == 'cpu' else device}, "
        f"integer labels, label_smoothing={eps}, mean reduction. Median of the interleaved samples; spread as "
        "min–max and interquartile range (IQR). \"smoothloss ÷ this\" < 1 means smoothloss is faster. "
        "\"÷ floor\": this implementation's median ÷ the floor's, the framework's own softmax of the logits "
        "(2 reads + 1 write of the logits, the least a loss and its gradient can cost; neither a built-in nor "
        "smoothloss). First call: the first step at this size in this process, tracing and compiling included. "
        + ("On torch, `smoothloss.cross_entropy` runs in the default compile mode (compiled kernels from "
           f"{_threshold_text(report)} logits up; [compiled] marks the sizes where it did) and, on the "
           "\"eager kernels\" row, with `smoothloss.set_compile_mode(\"never\")`. "
           if "torch" in report["frameworks"] else "")
        + "Extra memory: peak "
        + ("resident set" if device == "cpu" else "device memory")
        + " of one step beyond the inputs (logits, labels) and the warmed-up framework; the gradient alone is "
        "1× logits.",
        "",
        "| framework | B×K (logits MiB) | implementation | median ms | min–max ms | IQR ms | first call ms "
        "| smoothloss ÷ this | ÷ floor | extra memory MiB (÷ logits) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fw, res in report["frameworks"].items():
        if "error" in res:
            lines.append(f"| {fw} | — | failed: {res['error'][:200]} | | | | | | | |")
            continue
        mem = {(m["implementation"], tuple(m["size"])): m for m in res.get("memory", [])}
        for entry in res["sizes"]:
            size = tuple(entry["size"])
            sl = entry["results"].get("smoothloss", {}).get("median_ms")
            floor = entry["results"].get("floor", {}).get("median_ms")
            for impl in IMPLS[fw]:
                rec = entry["results"].get(impl.key)
                if rec is None:
                    continue
                if "error" in rec:
                    lines.append(f"| {fw} | {size_name(size)} | {impl.label} | failed: {rec['error'][:120]} "
                                 "| | | | | | |")
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
                    f"| {fw} | {size_name(size)} ({logits_mib(size):.2f}) | {_impl_label(impl, rec)} "
                    f"| {_fmt_ms(rec['median_ms'])} | {_fmt_ms(rec['min_ms'])}–{_fmt_ms(rec['max_ms'])} "
                    f"| {_fmt_ms(rec['q1_ms'])}–{_fmt_ms(rec['q3_ms'])} | {_fmt_ms(rec.get('first_call_ms'))} "
                    f"| {rel} | {fmt_ratio(ratio(rec['median_ms'], floor))} | {memtxt} |"
                )
    summary = report["summary"]
    if summary["ratios"]:
        lines += [
            "",
            "smoothloss ÷ the built-ins and ÷ the floor, per framework and size (the fastest built-in is named):",
            "",
            "| framework | B×K | smoothloss ÷ fastest built-in | smoothloss ÷ main built-in | smoothloss ÷ floor "
            "| default ÷ eager kernels | extra MiB: smoothloss / main built-in / least built-in |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in summary["ratios"]:
            fastest = f"{fmt_ratio(r['vs_fastest'])} ({r['fastest_builtin']})" if r["fastest_builtin"] else "—"
            lines.append(
                f"| {r['framework']} | {size_name(r['size'])} | {fastest} | {fmt_ratio(r['vs_main'])} ({r['main_builtin']}) "
                f"| {fmt_ratio(r.get('vs_floor'))} | {fmt_ratio(r.get('vs_eager_kernels'))} "
                f"| {_fmt_mib(r['memory_extra_mib'])} / {_fmt_mib(r['memory_main_builtin_mib'])} "
                f"/ {_fmt_mib(r['memory_min_builtin_mib'])} |"
            )
    if summary.get("crossover"):
        lines += _crossover_markdown(summary["crossover"])
    if summary["dispatch"]:
        lines += [
            "",
            f"Tiny batch {size_name(TINY)} (dispatch overhead; torch eager, jax jitted, TensorFlow eager):",
            "",
            "| framework | mode | implementation | median µs | min–max µs | first call ms | smoothloss ÷ this |",
            "|---|---|---|---:|---:|---:|---:|",
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
                    lines.append(f"| {fw} | {d['mode']} | {impl.label} | failed: {rec['error'][:120]} | | | |")
                    continue
                rel = "1.00×" if impl.key == "smoothloss" else fmt_ratio(ratio(sl, rec["median_ms"]))
                label = impl.label.replace(" (tf.function)", "").replace(" (jit)", "")
                lines.append(
                    f"| {fw} | {d['mode']} | {label} | {rec['median_ms'] * 1e3:.0f} "
                    f"| {rec['min_ms'] * 1e3:.0f}–{rec['max_ms'] * 1e3:.0f} | {_fmt_ms(rec.get('first_call_ms'))} "
                    f"| {rel} |"
                )
    if summary["targets"]:
        lines += [
            "",
            "Targets (ratios from this one run):",
            "",
            "| target | where | measured | limit | met |",
            "|---|---|---:|---:|---|",
        ]
        for t in summary["targets"]:
            unit = t.get("unit")
            val = f"{t['value']:.2f} {unit}" if unit else f"{t['value']:.3f}×"
            lim = f"{t['limit']:.2f} {unit}" if unit else f"{t['limit']:.2f}×"
            lines.append(f"| {t['target']} | {t['where']} | {val} | {lim} | {'yes' if t['met'] else '**no**'} |")
    notes = [
        "Compiling is paid once per process: smoothloss's compiled torch kernels are compiled on the first call "
        "of each dtype and option set (the first call ms of the first size that uses them) and reused for every "
        "batch size and class count; `jax.jit` and `tf.function` trace and compile again for each new shape.",
        "Keras CategoricalCrossentropy gets `tf.one_hot(y)` built inside the step, as optax gets `jax.nn.one_hot(y)`: "
        "all implementations start from integer labels.",
        "Keras SparseCategoricalCrossentropy has no label smoothing in Keras 3.15: it computes a different (unsmoothed) "
        "loss and is listed for speed only.",
        "The timm row is timm's LabelSmoothingCrossEntropy formula written out in torch (log_softmax, gather, mean).",
    ]
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _threshold_text(report: dict[str, Any]) -> str:
    threshold = report["frameworks"].get("torch", {}).get("compile_threshold")
    return f"{threshold:,}" if threshold else "`COMPILE_THRESHOLD`"


def _crossover_markdown(c: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Compiled vs eager kernels by size (torch, `smoothloss.cross_entropy` with `set_compile_mode(\"always\")` "
        "against `\"never\"`, forward+backward, float32, integer labels; compiled ÷ eager < 1: the compiled "
        "kernels are faster):",
        "",
        "| B×K | logits | compiled ms | eager kernels ms | compiled ÷ eager | compiled first call ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in c["sizes"]:
        lines.append(f"| {size_name(r['size'])} | {r['logits']:,} | {_fmt_ms(r['compiled_ms'])} "
                     f"| {_fmt_ms(r['eager_ms'])} | {fmt_ratio(r['compiled_over_eager'])} "
                     f"| {_fmt_ms(r['compiled_first_call_ms'])} |")
    now = f"the default mode compiles from {c['threshold']:,} logits (`COMPILE_THRESHOLD`)" if c.get("threshold") \
        else "the default mode's threshold is unknown"
    if c.get("compile_failed"):
        found = f"torch.compile failed here ({c['compile_failed']}): both rows ran the eager kernels"
    elif c["crossover_size"] is None:
        found = "the compiled kernels won at none of these sizes (or not at every larger one)"
    elif c["crossover_size"] == c["sizes"][0]["size"]:
        found = (f"the compiled kernels won at every size measured, from {size_name(c['crossover_size'])} "
                 f"({c['crossover_logits']:,} logits)")
    else:
        found = (f"the compiled kernels win from {size_name(c['crossover_size'])} ({c['crossover_logits']:,} logits) "
                 "up")
    return [*lines, "", f"Measured crossover: {found}; {now}."]


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
            style: dict[str, Any] = {"lw": 1.3, "marker": "s", "ls": "--"}
            if impl.floor:
                style = {"lw": 1.3, "marker": "", "ls": ":", "color": "0.35"}
            elif impl.key == "smoothloss":
                style = {"lw": 2.4, "marker": "o"}
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


