"""``python -m smoothloss bench``: smoothloss against each framework's own cross-entropy.

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
allocators, except in ``--quick`` mode).

Chunked linear cross-entropy (``--linear NxHxV[,...]``; in ``--quick`` mode 256x64x1024 by
default; ``--only-linear`` skips everything above): ``linear_cross_entropy(hidden, weight,
labels)`` against ``cross_entropy(hidden @ weight.T, labels)``, forward+backward with respect
to hidden and weight, in ``--linear-frameworks`` (default torch), ``--linear-repeats`` fresh
processes per path (the paths alternated), each timing one step after a warm-up step and
taking its peak resident set after a high-water-mark reset (see ``smoothloss._bench_linear``).
Its results are ``bench.json``'s ``"linear"`` and a table at the end of the Markdown.

Outputs in ``--out``: ``bench.json`` (every sample, machine and versions), ``bench.md``
(the tables) and ``bench.png`` (time against K, one panel per framework). With
``--docs PATH`` the same Markdown, with the machine description and the command that
regenerates it, is written to PATH and the plot next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FRAMEWORKS = ("torch", "jax", "tensorflow")
DEFAULT_SIZES = ((4096, 10), (4096, 1000), (1024, 32000), (256, 128256))
QUICK_SIZES = ((64, 10), (256, 1000))
TINY = (32, 10)
QUICK_LINEAR_SIZES = ((256, 64, 1024),)
MIB = float(1 << 20)
SCHEMA = 1


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


def size_name(size: Sequence[int]) -> str:
    return f"{size[0]}×{size[1]}"


def logits_mib(size: Sequence[int]) -> float:
    return size[0] * size[1] * 4 / MIB


def installed(framework: str) -> bool:
    extra = {"jax": ("optax",), "tensorflow": ("keras",)}.get(framework, ())
    return all(importlib.util.find_spec(m) is not None for m in (framework, *extra))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    return None


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def _source_digest() -> str:
    """sha256 (12 hex digits) of smoothloss's own sources, the benchmark excepted: which
    code was measured, even in a working tree with uncommitted changes."""
    import hashlib

    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        if f.name not in ("_bench.py", "_bench_linear.py"):
            h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (no framework is imported here)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gib": _mem_total_gib(),
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in ("smoothloss", "numpy", "torch", "jax", "jaxlib", "optax", "tensorflow", "keras", "matplotlib")
        },
        "smoothloss_git": _git_revision(),
        "smoothloss_source_sha256": _source_digest(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


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


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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
            _log(f"{framework} {size_name(size)} {impl.key}: FAILED {rec['error']}")
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
                _log(f"{framework} {size_name(size)} {impl.key}: loss {rec['loss']} differs from smoothloss {ref}")
    return out


def _framework_info(framework: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if framework == "torch":
        import torch

        info = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}
    elif framework == "jax":
        import jax

        info = {"jax_devices": [str(d) for d in jax.devices()], "jax_backend": jax.default_backend()}
    elif framework == "tensorflow":
        import tensorflow as tf

        info = {
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "keras_backend": __import__("keras").backend.backend(),
        }
    return info


def _worker_time(spec: dict[str, Any]) -> dict[str, Any]:
    fw = spec["framework"]
    result: dict[str, Any] = {"framework": fw, "info": _framework_info(fw), "sizes": [], "dispatch": None, "memory": []}
    for size in spec["sizes"]:
        size = tuple(size)
        t0 = time.perf_counter()
        recs = _time_size(fw, size, spec["smoothing"], spec["repeats"], spec["warmup"], spec["min_sample_s"], False)
        result["sizes"].append({"size": list(size), "results": recs})
        meds = ", ".join(f"{k} {v['median_ms']:.3g} ms" for k, v in recs.items() if "median_ms" in v)
        _log(f"{fw:<10} {size_name(size):>12}: {meds} ({time.perf_counter() - t0:.1f}s)")
    if spec.get("tiny"):
        recs = _time_size(fw, TINY, spec["smoothing"], spec["repeats"], spec["warmup"],
                          spec["tiny_min_sample_s"], True)
        result["dispatch"] = {"size": list(TINY), "mode": EAGER_NOTE[fw], "results": recs}
        meds = ", ".join(f"{k} {v['median_ms'] * 1e3:.0f} µs" for k, v in recs.items() if "median_ms" in v)
        _log(f"{fw:<10} {size_name(TINY):>12} ({EAGER_NOTE[fw]}): {meds}")
    if spec.get("memory_in_process"):
        for size in spec["memory_sizes"]:
            for impl in IMPLS[fw]:
                result["memory"].append(_measure_memory(fw, impl.key, tuple(size), spec["smoothing"], fresh=False))
    return result


# --------------------------------------------------------------------------- memory


def _rss_now_and_hwm() -> tuple[float, float] | None:
    """(VmRSS, VmHWM) in bytes from /proc, or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, value = line.split(":", 1)
            vals[name] = float(value.split()[0]) * 1024
    if len(vals) != 2:
        return None
    return vals["VmRSS"], vals["VmHWM"]


def _reset_hwm() -> bool:
    """Reset the resident-set high-water mark to the current resident set (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    now = _rss_now_and_hwm()
    return now is not None and now[1] <= now[0] + 64 * 1024  # the reset took effect


def _ru_maxrss() -> float:
    """The process's peak resident set in bytes (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) if sys.platform == "darwin" else float(peak) * 1024


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS, so that the next step has to fault its own."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
        _malloc_trim()
        ru0 = _ru_maxrss()
        loss = step()  # the first full-size step: compiles / traces for this shape
        del loss
        steps.reset()
        rec["extra_mib_first_step_ru_maxrss"] = (_ru_maxrss() - ru0) / MIB
        if key in steps.extra:  # jax: XLA's own account of the compiled step
            ma = steps.extra[key]()
            if ma is not None:
                rec["xla_temp_mib"] = ma.temp_size_in_bytes / MIB
                rec["xla_output_mib"] = ma.output_size_in_bytes / MIB
        if _reset_hwm():
            extras = []
            for _ in range(2):  # two measured steps, the smaller counts (a stray allocation is not the step's)
                gc.collect()
                _malloc_trim()
                _reset_hwm()
                base = _rss_now_and_hwm()[0]  # type: ignore[index]
                loss = step()
                peak = _rss_now_and_hwm()[1]  # type: ignore[index]
                del loss
                steps.reset()
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


def _worker_memory(spec: dict[str, Any]) -> dict[str, Any]:
    return _measure_memory(spec["framework"], spec["implementation"], tuple(spec["size"]), spec["smoothing"], True)


# --------------------------------------------------------------------------- subprocesses


def _child_env(framework: str, memory: bool = False, threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if memory:
        # A fixed mmap threshold: glibc otherwise raises it (up to 32 MiB) after the first
        # large free, and later steps reuse already-resident heap pages that the resident
        # set cannot see being allocated. With it, every block >= 256 KiB is mapped on
        # allocation and unmapped on free.
        env["MALLOC_MMAP_THRESHOLD_"] = str(256 * 1024)
    if framework == "tensorflow":
        env["KERAS_BACKEND"] = "tensorflow"
        if memory:
            # TensorFlow's oneDNN CPU allocator keeps large blocks in a BFC pool, which hides
            # a step's allocations from the resident set; the system allocator does not.
            env["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = "1"
    if framework == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
        if framework == "jax" and threads == 1:  # XLA:CPU has no thread-count flag; this one is on/off
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


def _run_worker(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; relay its ``[bench]`` lines; return its JSON."""
    with tempfile.TemporaryDirectory(prefix="smoothloss-bench-") as tmp:
        out_path = Path(tmp) / "result.json"
        spec = {**spec, "out": str(out_path)}
        env = _child_env(spec["framework"],
                         spec["task"] in ("memory", "linear") or bool(spec.get("memory_in_process")),
                         spec.get("threads"))
        tail: list[str] = []
        with subprocess.Popen(
            [sys.executable, "-m", "smoothloss._bench", "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        ) as proc:
            killer = threading.Timer(timeout_s, proc.kill)
            killer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.startswith("[bench]"):
                        sys.stderr.write(line)
                        sys.stderr.flush()
                    else:
                        tail = (tail + [line.rstrip()])[-40:]
                rc = proc.wait()
            finally:
                killer.cancel()
        if rc != 0 or not out_path.exists():
            reason = "timed out" if rc in (-9, 137) else f"exit status {rc}"
            return {"error": f"worker {reason}: " + " | ".join(tail[-8:])}
        return json.loads(out_path.read_text())


def _apply_threads(framework: str, threads: int | None) -> None:
    if not threads:
        return
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    elif framework == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
    # jax: XLA_FLAGS, set in the environment before jax is imported


def _worker_entry(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    _apply_threads(spec["framework"], spec.get("threads"))
    task = spec["task"]
    if task == "linear":
        from smoothloss._bench_linear import worker as linear_worker

        result = linear_worker(spec)
    else:
        result = _worker_time(spec) if task == "time" else _worker_memory(spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _impl(framework: str, key: str) -> Impl:
    return next(i for i in IMPLS[framework] if i.key == key)


def _summarise(frameworks: dict[str, Any], sizes: list[tuple[int, int]]) -> dict[str, Any]:
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
                "vs": {k: _ratio(sl, v) for k, v in builtins.items()},
                "fastest_builtin": fastest,
                "vs_fastest": _ratio(sl, builtins.get(fastest)) if fastest else None,
                "vs_main": _ratio(sl, builtins.get(main_key)),
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
                "vs": {k: _ratio(sl, v.get("median_ms")) for k, v in recs.items() if _impl(fw, k).builtin},
                "vs_main": _ratio(sl, recs.get(main_key, {}).get("median_ms")), "main_builtin": main_key,
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


def _fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _fmt_mib(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def markdown_tables(report: dict[str, Any]) -> str:
    """The results as Markdown: timings with memory, ratios and targets, dispatch; then the
    chunked linear cross-entropy's table if it was measured (``--linear``)."""
    parts = [_frameworks_markdown(report)] if report["frameworks"] else []
    if report.get("linear"):
        from smoothloss._bench_linear import markdown as linear_markdown

        parts.append(linear_markdown(report["linear"]))
    return "\n".join(parts)


def _frameworks_markdown(report: dict[str, Any]) -> str:
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
                ratio = "1.00×" if impl.key == "smoothloss" else _fmt_ratio(_ratio(sl, rec["median_ms"]))
                lines.append(
                    f"| {fw} | {size_name(size)} ({logits_mib(size):.2f}) | {impl.label} | {_fmt_ms(rec['median_ms'])} "
                    f"| {_fmt_ms(rec['min_ms'])}–{_fmt_ms(rec['max_ms'])} | {_fmt_ms(rec['q1_ms'])}–{_fmt_ms(rec['q3_ms'])} "
                    f"| {ratio} | {memtxt} |"
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
            fastest = f"{_fmt_ratio(r['vs_fastest'])} ({r['fastest_builtin']})" if r["fastest_builtin"] else "—"
            lines.append(
                f"| {r['framework']} | {size_name(r['size'])} | {fastest} | {_fmt_ratio(r['vs_main'])} ({r['main_builtin']}) "
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
                ratio = "1.00×" if impl.key == "smoothloss" else _fmt_ratio(_ratio(sl, rec["median_ms"]))
                label = impl.label.replace(" (tf.function)", "").replace(" (jit)", "")
                lines.append(
                    f"| {fw} | {d['mode']} | {label} | {rec['median_ms'] * 1e3:.0f} "
                    f"| {rec['min_ms'] * 1e3:.0f}–{rec['max_ms'] * 1e3:.0f} | {ratio} |"
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


def _machine_line(m: dict[str, Any]) -> str:
    v = m["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "jax", "optax", "tensorflow", "keras", "numpy") if v.get(k))
    load = ""
    if m.get("loadavg_start") and m.get("loadavg_end"):
        load = f"; load average (1/5/15 min) {m['loadavg_start']} at start, {m['loadavg_end']} at end"
    git = f"; smoothloss at git {m['smoothloss_git']}" if m.get("smoothloss_git") else ""
    if m.get("smoothloss_source_sha256"):
        git += f" (sources sha256 {m['smoothloss_source_sha256']})"
    return (f"{m['cpu_model']}, {m['cpus_usable']} usable CPUs of {m['cpu_count']}, "
            f"{m['memory_gib']} GiB RAM, {m['platform']}, Python {m['python']}; {vers}{git}{load}")


def _threads_line(report: dict[str, Any]) -> str:
    parts = []
    for fw, res in report["frameworks"].items():
        info = res.get("info", {})
        if "torch_threads" in info:
            n = info["torch_threads"]
            parts.append(f"torch: {n} intra-op thread{'' if n == 1 else 's'}")
        if "tf_intra_op_threads" in info:
            n = info["tf_intra_op_threads"]
            parts.append(f"TensorFlow: {n or 'automatic'} intra-op thread{'' if n == 1 else 's'}")
        if fw == "jax" and "error" not in res:
            threads = report["settings"].get("threads")
            parts.append("XLA:CPU: " + ("multi-threaded Eigen off" if threads == 1 else "default threading"))
    requested = report["settings"].get("threads")
    head = f"--threads {requested}" if requested else "each framework's default threading"
    return f"{head} ({', '.join(parts)})" if parts else head


def docs_page(report: dict[str, Any], png_name: str | None, command: str) -> str:
    m = report["machine"]
    s = report["settings"]
    if s.get("only_linear"):
        parts = [
            "# Benchmark: chunked linear cross-entropy", "", "Generated by:", "", "```bash", command, "```", "",
            f"**Machine:** {_machine_line(m)}.", "", f"Run at {report['started']} in {report['elapsed_s']:.0f} s.",
        ]
        if report.get("note"):
            parts += ["", f"**Note:** {report['note']}"]
        return "\n".join([*parts, "", report["markdown"]])
    parts = [
        "# Benchmarks",
        "",
        "smoothloss's label-smoothed cross-entropy against each framework's own, forward+backward, "
        "measured side by side in one run. Generated by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"**Machine:** {_machine_line(m)}.",
        "",
        f"**Threads:** {_threads_line(report)}.",
        "",
        f"Run at {report['started']} in {report['elapsed_s']:.0f} s; {s['repeats']} interleaved samples per "
        f"implementation and size after {s['warmup']} warm-up calls.",
    ]
    if report.get("note"):
        parts += ["", f"**Note:** {report['note']}"]
    parts += [
        "",
        "How it is measured: each framework runs in its own subprocess; within a size the implementations "
        "are warmed up and then sampled in turn (A, B, C, B, C, A, …), each sample averaging enough steps to "
        "last a few milliseconds. Memory: each framework × implementation × size runs in a fresh process; "
        "after a warm-up on a small batch and one full-size step (compilation), the resident-set high-water "
        "mark is reset and one more step is run; the peak minus the resident set before it is the step's extra "
        "memory (the smaller of two such steps). Memory runs use a fixed glibc mmap threshold "
        "(`MALLOC_MMAP_THRESHOLD_=262144`) so that large blocks are mapped and unmapped with each step, and "
        "TensorFlow with `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`, as its default CPU allocator pools large blocks out "
        "of sight of the resident set; timings use the default allocators. Throughput numbers on a shared "
        "machine are noisy: compare the ratios, which come from one interleaved run, rather than absolute times.",
        "",
    ]
    if png_name:
        parts += [f"![forward+backward time against K]({png_name})", ""]
    parts.append(report["markdown"])
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def _linear_size_names(sizes: Sequence[Sequence[int]]) -> list[str]:
    return ["x".join(str(d) for d in size) for size in sizes]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smoothloss bench",
        description="Time forward+backward and peak memory of smoothloss against each framework's own "
        "label-smoothed cross-entropy; write JSON, a Markdown table and a PNG plot.",
    )
    p.add_argument("--sizes", default=None,
                   help="comma-separated BxK (default: 4096x10,4096x1000,1024x32000,256x128256; "
                   "--quick: 64x10,256x1000)")
    p.add_argument("--frameworks", default=None, help=f"comma-separated subset of {','.join(FRAMEWORKS)} "
                   "(default: those installed)")
    p.add_argument("--out", default="bench-out", help="output folder (default: bench-out)")
    p.add_argument("--quick", action="store_true", help="CI mode: tiny sizes, few repeats, under a minute")
    p.add_argument("--repeats", type=int, default=None, help="interleaved samples per implementation "
                   "(default 10; --quick 3)")
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing ε (default 0.1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--no-tiny", action="store_true", help=f"skip the {size_name(TINY)} dispatch-overhead timing")
    p.add_argument("--docs", default=None, help="also write this Markdown page (e.g. docs/benchmarks.md), "
                   "with the plot next to it")
    p.add_argument("--note", default=None, help="a sentence to put in the docs page (e.g. about machine load)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for torch and TensorFlow (jax: only 1 is honoured, through XLA_FLAGS); "
                   "default: each framework's own choice")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to each subprocess")
    g = p.add_argument_group(
        "chunked linear cross-entropy",
        "linear_cross_entropy(hidden, weight, labels) against cross_entropy(hidden @ weight.T, labels), "
        "forward+backward, peak memory and time, each run a fresh process (see smoothloss._bench_linear)",
    )
    g.add_argument("--linear", default=None, metavar="NxHxV[,NxHxV...]",
                   help="also run the linear benchmark for these sizes (default: none; --quick: "
                   + ",".join(_linear_size_names(QUICK_LINEAR_SIZES)) + "); 'none' turns it off")
    g.add_argument("--linear-frameworks", default="torch",
                   help=f"comma-separated subset of {','.join(FRAMEWORKS)} for --linear (default: torch)")
    g.add_argument("--linear-chunk", type=int, default=None,
                   help="chunk_size of the chunked path (default: the library's default, about 64 MiB of logits)")
    g.add_argument("--linear-repeats", type=int, default=None,
                   help="fresh-process runs per path and size, the two paths alternated (default 3; --quick 1)")
    g.add_argument("--only-linear", action="store_true",
                   help="run only the linear benchmark: skip the frameworks' losses (--sizes, --frameworks, "
                   "memory and tiny-batch timings); needs --linear or --quick")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 if any framework or implementation failed, 2 on bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_entry(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes) if args.sizes else list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    except ValueError as exc:
        parser.error(str(exc))
    if args.frameworks:
        wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
        unknown = [f for f in wanted if f not in FRAMEWORKS]
        if unknown:
            parser.error(f"unknown framework(s) {unknown}; choose from {list(FRAMEWORKS)}")
    else:
        wanted = list(FRAMEWORKS)
    from smoothloss import _bench_linear

    try:
        if args.linear is not None:
            linear_sizes = _bench_linear.parse_linear_sizes(args.linear)
        else:
            linear_sizes = list(QUICK_LINEAR_SIZES) if args.quick else []
    except ValueError as exc:
        parser.error(str(exc))
    linear_fws = [f.strip() for f in args.linear_frameworks.split(",") if f.strip()]
    unknown = [f for f in linear_fws if f not in FRAMEWORKS]
    if unknown or not linear_fws:
        parser.error(f"--linear-frameworks: unknown framework(s) {unknown}; choose from {list(FRAMEWORKS)}")
    if args.linear_chunk is not None and args.linear_chunk < 1:
        parser.error("--linear-chunk must be >= 1")
    linear_repeats = args.linear_repeats if args.linear_repeats is not None else (1 if args.quick else 3)
    if linear_repeats < 1:
        parser.error("--linear-repeats must be >= 1")
    if args.only_linear:
        if not linear_sizes:
            parser.error("--only-linear needs --linear NxHxV (or --quick)")
        sizes, wanted = [], []
    if not 0.0 <= args.smoothing <= 1.0:
        parser.error("--smoothing must lie in [0, 1]")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    frameworks = [f for f in wanted if installed(f)]
    skipped = [f for f in wanted if f not in frameworks]
    for f in skipped:
        _log(f"{f}: not installed, skipped")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    settings = {
        "sizes": [list(s) for s in sizes], "frameworks": frameworks, "skipped": skipped,
        "smoothing": args.smoothing, "repeats": repeats, "warmup": 2 if args.quick else 3,
        "min_sample_s": 0.002 if args.quick else 0.02, "tiny_min_sample_s": 0.005 if args.quick else 0.05,
        "quick": args.quick, "memory": not args.no_memory, "tiny": not args.no_tiny, "threads": args.threads,
        "memory_mode": "in-process (quick)" if args.quick else "fresh subprocess per framework×implementation×size",
        "only_linear": args.only_linear,
    }
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "command": "python -m smoothloss bench" + ("" if not argv else " " + shlex.join(argv)),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "settings": settings,
        "note": args.note,
        "frameworks": {},
        "linear": None,
    }
    t_start = time.perf_counter()
    failed = False
    for fw in frameworks:
        spec = {
            "task": "time", "framework": fw, "sizes": settings["sizes"], "smoothing": args.smoothing,
            "repeats": repeats, "warmup": settings["warmup"], "min_sample_s": settings["min_sample_s"],
            "tiny": settings["tiny"], "tiny_min_sample_s": settings["tiny_min_sample_s"],
            "memory_in_process": settings["memory"] and args.quick, "memory_sizes": settings["sizes"],
            "threads": args.threads,
        }
        res = _run_worker(spec, args.timeout)
        if "error" in res:
            _log(f"{fw}: FAILED {res['error']}")
            failed = True
        report["frameworks"][fw] = res

    if settings["memory"] and not args.quick:
        for fw in frameworks:
            res = report["frameworks"][fw]
            if "error" in res:
                continue
            for size in sizes:
                for impl in IMPLS[fw]:
                    rec = _run_worker({"task": "memory", "framework": fw, "implementation": impl.key,
                                       "size": list(size), "smoothing": args.smoothing,
                                       "threads": args.threads}, args.timeout)
                    rec.setdefault("framework", fw)
                    rec.setdefault("implementation", impl.key)
                    rec.setdefault("size", list(size))
                    rec.setdefault("logits_mib", logits_mib(size))
                    res["memory"].append(rec)
                    msg = (f"{rec['extra_mib']:.2f} MiB beyond inputs (logits {logits_mib(size):.2f} MiB)"
                           if rec.get("extra_mib") is not None else f"FAILED {rec.get('error')}")
                    _log(f"memory {fw:<10} {size_name(size):>12} {impl.key:<16} {msg}")

    if linear_sizes:
        report["linear"] = _bench_linear.run(
            linear_fws, linear_sizes, args.linear_chunk, linear_repeats, eps=args.smoothing,
            threads=args.threads, timeout_s=args.timeout,
        )
        failed |= _bench_linear.failed(report["linear"])

    for res in report["frameworks"].values():
        if "error" in res:
            continue
        for entry in res["sizes"] + ([res["dispatch"]] if res.get("dispatch") else []):
            failed |= any("error" in r for r in entry["results"].values())
        failed |= any("error" in m for m in res.get("memory", []))

    with contextlib.suppress(OSError, AttributeError):
        report["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["elapsed_s"] = time.perf_counter() - t_start
    report["summary"] = _summarise(report["frameworks"], sizes)
    report["markdown"] = markdown_tables(report)

    png = plot(report, out_dir / "bench.png")
    report["plot"] = png
    if png is None and frameworks and importlib.util.find_spec("matplotlib") is None:
        _log("matplotlib is not installed: no plot (pip install 'smoothloss[bench]')")
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out_dir / "bench.md").write_text(
        f"# smoothloss bench\n\n`{report['command']}`\n\n**Machine:** {_machine_line(report['machine'])}.\n\n"
        f"**Threads:** {_threads_line(report)}.\n\n"
        + (f"![plot](bench.png)\n\n" if png else "") + report["markdown"]
    )
    if args.docs:
        doc = Path(args.docs)
        doc.parent.mkdir(parents=True, exist_ok=True)
        png_name = None
        if png:
            png_name = doc.with_suffix(".png").name
            shutil.copyfile(png, doc.with_suffix(".png"))
        doc.write_text(docs_page(report, png_name, report["command"]))
        _log(f"wrote {doc}" + (f" and {doc.with_suffix('.png')}" if png_name else ""))

    print(report["markdown"])
    print(f"JSON, Markdown and plot in {out_dir}/ ({report['elapsed_s']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
