"""Peak memory and time of forward+backward: chunked linear cross-entropy vs the unchunked path.

For hidden states (N, H), a projection (V, H) and integer labels (N,), float32 on the CPU,
``label_smoothing=0.1``, mean reduction, this compares one forward+backward with respect
to hidden *and* weight of

* unchunked: ``smoothloss.cross_entropy(hidden @ weight.T, labels)``, whose N×V logits and
  their gradient exist at once;
* builtin: the framework's own label-smoothed loss on the same N×V logits: torch
  ``F.cross_entropy(hidden @ weight.T, labels, label_smoothing=ε)``, optax
  ``softmax_cross_entropy`` of ``smooth_labels(one_hot(labels))``, Keras
  ``CategoricalCrossentropy(from_logits=True, label_smoothing=ε)`` of ``one_hot(labels)``;
* chunked: ``smoothloss.linear_cross_entropy(hidden, weight, labels, chunk_size=C)``
  (``C`` = None: the library's default, about 16 MiB of logits per chunk in torch, 64 MiB elsewhere);
* cce (torch, where ``cut_cross_entropy`` imports): Cut Cross-Entropy's
  ``linear_cross_entropy(hidden, weight, labels, impl="torch_compile")``, its CPU path
  (it has no label smoothing: this one path runs without);

every 10th label is ``-100``, ignored by every path (optax and Keras, which have no
ignore_index, mask their per-row losses and divide by the valid rows, as a user would);

in torch (``.backward()``), jax (``jax.jit(jax.value_and_grad(f, argnums=(0, 1)))``) and
TensorFlow (a ``GradientTape`` inside ``tf.function``)::

    python -m smoothloss.bench.linear 8192 1024 65536               # N H V [chunk_size]
    python -m smoothloss.bench.linear 8192 1024 65536 512 --frameworks torch,jax --repeats 3

or as part of ``python -m smoothloss bench --linear NxHxV`` (``--only-linear`` for it alone).

Every run is a fresh subprocess for one (framework, path); for ``repeats`` R the paths
alternate, R runs each (U B C C B U ...), so that drifting machine load hits them alike.

Inside a run: the inputs are made, one full-size warm-up step runs (jax compiles, TensorFlow
traces, thread pools and kernels start), its outputs are dropped and ``malloc_trim`` hands
freed pages back. Then the resident set's high-water mark is reset (Linux
``/proc/self/clear_refs``) and one measured step runs: its wall time is the run's time, the
high-water mark after it its peak (``peak_mib``), the resident set at the reset
``peak_before_mib`` (runtime, compiled code and inputs), and ``peak − before`` its extra
memory (the logits or chunks, their gradients, the gradients of hidden and weight). So the
warm-up speeds the timing up without entering the peak, and compilation memory is not
counted. Where the reset is unavailable (not Linux), the peak is ``ru_maxrss`` over the
*first* step (compilation included), ``peak_before_mib`` the ``ru_maxrss`` before it, and the
time that of the second step; the record says which (``method``).

Runs use the memory settings of ``python -m smoothloss bench``: a fixed glibc mmap threshold
(``MALLOC_MMAP_THRESHOLD_=262144``: large blocks are mapped when allocated and unmapped when
freed, so every step faults its own) and ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`` (TensorFlow's
default CPU allocator pools large blocks out of sight of the resident set). Both paths run
under the same settings, so the time ratio is like for like.

Reported per (framework, size): the median time and every sample, the largest peak, the
median ``peak_before_mib``, the largest extra, and the ratios chunked ÷ unchunked of time,
of peak (``peak_ratio``) and of extra beyond the inputs (``extra_ratio``), and the same
chunked ÷ builtin (``time_ratio_builtin``, ``peak_ratio_builtin``, ``extra_ratio_builtin``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smoothloss.bench.common import (
    FRAMEWORKS, MIB, framework_info, log, malloc_trim, measured_step, ratio, ru_maxrss, run_worker,
    size_name, write_json,
)

MODES = ("unchunked", "builtin", "chunked")
BUILTIN = {"torch": "F.cross_entropy", "jax": "optax", "tensorflow": "Keras CCE"}
CCE = "cce"  # Cut Cross-Entropy's torch_compile path, a fourth torch path where it imports
SMOOTHING = 0.1
IGNORE_INDEX, IGNORE_EVERY = -100, 10  # labels[::IGNORE_EVERY] = IGNORE_INDEX
QUICK_SIZES = ((256, 64, 1024),)  # ``python -m smoothloss bench --quick``


# --------------------------------------------------------------------------- helpers


def parse_linear_sizes(text: str) -> list[tuple[int, int, int]]:
    """``"8192x1024x65536,256x64x1024"`` → ``[(8192, 1024, 65536), (256, 64, 1024)]``;
    ``"none"`` → ``[]``. Separators ``x``, ``X``, ``×``, ``*``.

    >>> parse_linear_sizes("8192x1024x65536, 4×3*5")
    [(8192, 1024, 65536), (4, 3, 5)]
    >>> parse_linear_sizes("none")
    []
    >>> parse_linear_sizes("8x4")
    Traceback (most recent call last):
    ...
    ValueError: linear size '8x4' is not of the form NxHxV
    """
    if text.strip().lower() == "none":
        return []
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        norm = part
        for sep in ("X", "×", "*"):
            norm = norm.replace(sep, "x")
        fields = norm.split("x")
        if len(fields) != 3:
            raise ValueError(f"linear size {part!r} is not of the form NxHxV")
        try:
            n, h, v = (int(f) for f in fields)
        except ValueError:
            raise ValueError(f"linear size {part!r} is not of the form NxHxV with integers") from None
        if n < 1 or h < 1 or v < 2:
            raise ValueError(f"linear size {part!r}: N and H must be >= 1 and V >= 2")
        sizes.append((n, h, v))
    if not sizes:
        raise ValueError("no linear sizes given")
    return sizes


def logits_mib(size: Sequence[int]) -> float:
    """MiB of the float32 N×V logits that the unchunked path makes (its gradient is as large).

    >>> logits_mib((8192, 1024, 65536))
    2048.0
    """
    return size[0] * size[2] * 4 / MIB


def inputs_mib(size: Sequence[int]) -> float:
    """MiB of the inputs: float32 hidden (N×H) and weight (V×H), int64 labels (N).

    >>> round(inputs_mib((8192, 1024, 65536)), 2)
    288.06
    """
    n, h, v = size
    return (n * h * 4 + v * h * 4 + n * 8) / MIB


def chunk_rows(size: Sequence[int], chunk: int | None, framework: str = "torch") -> int | None:
    """Rows in the largest chunk: ``chunk`` or, for None, what the library's default
    (``_linear.default_chunk`` of float32 logits) picks in ``framework`` (torch's kernels
    make each chunk's gradient in place); at most N. None if unknown.

    >>> chunk_rows((100, 8, 1000), 64), chunk_rows((100, 8, 1000), 512)
    (64, 100)
    >>> chunk_rows((4096, 512, 32768), None), chunk_rows((4096, 512, 32768), None, "jax")
    (128, 512)
    """
    if chunk is None:
        from smoothloss import _linear

        default = getattr(_linear, "default_chunk", None)
        if default is None:
            return None
        chunk = default(int(size[2]), 4, framework == "torch")
    return min(int(chunk), int(size[0]))


def installed(framework: str) -> bool:
    return importlib.util.find_spec(framework) is not None


def make_inputs(size: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 hidden ~ N(0, 0.1²) (N, H), weight ~ N(0, 0.02²) (V, H), int64 labels (N,),
    every ``IGNORE_EVERY``-th of them ``IGNORE_INDEX``."""
    n, h, v = (int(s) for s in size)
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, h), dtype=np.float32)
    hidden *= np.float32(0.1)
    weight = rng.standard_normal((v, h), dtype=np.float32)
    weight *= np.float32(0.02)
    labels = rng.integers(0, v, size=(n,), dtype=np.int64)
    labels[::IGNORE_EVERY] = IGNORE_INDEX
    return hidden, weight, labels


def cce_importable() -> str | None:
    """None where Cut Cross-Entropy imports here, else why not (it needs Triton even for
    its CPU path)."""
    if not installed("cut_cross_entropy"):
        return "cut_cross_entropy is not installed"
    try:
        import cut_cross_entropy  # noqa: F401
    except Exception as exc:  # noqa: BLE001 (whatever its import raised)
        return f"cut_cross_entropy does not import: {type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- steps


class Step:
    """One forward+backward with respect to hidden and weight, run to completion by
    ``run()``, which returns the outputs (kept alive by the caller until it drops them);
    ``loss(out)`` / ``grads(out)`` read them; ``reset()`` drops what the framework keeps
    between steps (torch's ``.grad``)."""

    def __init__(self, run: Callable[[], Any], loss: Callable[[Any], float],
                 grads: Callable[[Any], tuple[np.ndarray, np.ndarray]], reset: Callable[[], None] = lambda: None):
        self.run, self.loss, self.grads, self.reset = run, loss, grads, reset


def _loss_fn(framework: str, mode: str, chunk: int | None, eps: float) -> Callable[[Any, Any, Any], Any]:
    import smoothloss

    ignore = IGNORE_INDEX
    if mode == "chunked":
        return lambda h, w, y: smoothloss.linear_cross_entropy(
            h, w, y, label_smoothing=eps, ignore_index=ignore, chunk_size=chunk
        )
    if mode == CCE and framework == "torch":
        from cut_cross_entropy import linear_cross_entropy as cce

        return lambda h, w, y: cce(h, w, y, ignore_index=ignore, impl="torch_compile")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (or {CCE!r} for torch), got {mode!r}")
    if framework == "tensorflow":
        import tensorflow as tf

        def logits(h: Any, w: Any) -> Any:
            return tf.matmul(h, w, transpose_b=True)
    else:
        def logits(h: Any, w: Any) -> Any:
            return h @ w.T
    if mode == "unchunked":
        return lambda h, w, y: smoothloss.cross_entropy(logits(h, w), y, label_smoothing=eps, ignore_index=ignore)
    if framework == "torch":
        import torch.nn.functional as F

        return lambda h, w, y: F.cross_entropy(logits(h, w), y, label_smoothing=eps, ignore_index=ignore)
    if framework == "jax":
        import jax
        import optax

        def optax_loss(h: Any, w: Any, y: Any) -> Any:
            z = logits(h, w)
            rows = optax.softmax_cross_entropy(z, optax.smooth_labels(jax.nn.one_hot(y, z.shape[-1]), eps))
            valid = (y != ignore).astype(rows.dtype)
            return (rows * valid).sum() / valid.sum()

        return optax_loss
    import keras

    keras_cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps, reduction="none")

    def keras_loss(h: Any, w: Any, y: Any) -> Any:
        z = logits(h, w)
        rows = keras_cce(tf.one_hot(y, tf.shape(z)[-1]), z)
        valid = tf.cast(y != ignore, rows.dtype)
        return tf.reduce_sum(rows * valid) / tf.reduce_sum(valid)

    return keras_loss


def _torch_step(fn: Callable[..., Any], hidden: np.ndarray, weight: np.ndarray, labels: np.ndarray) -> Step:
    import torch

    h = torch.from_numpy(hidden).requires_grad_()
    w = torch.from_numpy(weight).requires_grad_()
    y = torch.from_numpy(labels)

    def reset() -> None:
        h.grad = None
        w.grad = None

    def run() -> Any:
        reset()
        loss = fn(h, w, y)
        loss.backward()
        return loss

    def grads(_out: Any) -> tuple[np.ndarray, np.ndarray]:
        assert h.grad is not None and w.grad is not None
        return h.grad.numpy().copy(), w.grad.numpy().copy()

    return Step(run, lambda out: float(out.detach()), grads, reset)


def _jax_step(fn: Callable[..., Any], hidden: np.ndarray, weight: np.ndarray, labels: np.ndarray) -> Step:
    import jax
    import jax.numpy as jnp

    h, w, y = jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(labels.astype(np.int32))
    g = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))

    def run() -> Any:
        return jax.block_until_ready(g(h, w, y))

    return Step(run, lambda out: float(out[0]), lambda out: (np.asarray(out[1][0]), np.asarray(out[1][1])))


def _tf_step(fn: Callable[..., Any], hidden: np.ndarray, weight: np.ndarray, labels: np.ndarray) -> Step:
    import tensorflow as tf

    h, w, y = tf.constant(hidden), tf.constant(weight), tf.constant(labels)

    @tf.function
    def g(h: Any, w: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(h)
            tape.watch(w)
            loss = fn(h, w, y)
        d_h, d_w = tape.gradient(loss, [h, w])
        return loss, d_h, d_w

    def run() -> Any:
        return g(h, w, y)  # a tf.function call on the CPU returns when its outputs are computed

    return Step(run, lambda out: float(out[0].numpy()), lambda out: (out[1].numpy(), out[2].numpy()))


STEP_BUILDERS = {"torch": _torch_step, "jax": _jax_step, "tensorflow": _tf_step}


def build_step(framework: str, mode: str, hidden: np.ndarray, weight: np.ndarray, labels: np.ndarray,
               chunk: int | None = None, eps: float = SMOOTHING) -> Step:
    """The forward+backward of ``mode`` ("unchunked", "builtin", "chunked", or torch's "cce") in ``framework``."""
    if framework not in STEP_BUILDERS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    return STEP_BUILDERS[framework](_loss_fn(framework, mode, chunk, eps), hidden, weight, labels)


# --------------------------------------------------------------------------- one run (child)


def measure(framework: str, mode: str, size: Sequence[int], chunk: int | None,
            eps: float = SMOOTHING) -> dict[str, Any]:
    """One run in this process: warm-up step, high-water-mark reset, measured step.

    Times in seconds, memory in MiB (see the module docstring for what each means).
    """
    rec: dict[str, Any] = {
        "framework": framework, "mode": mode, "size": [int(s) for s in size], "chunk": chunk,
        "chunk_rows": chunk_rows(size, chunk, framework) if mode == "chunked" else None,
        "logits_mib": logits_mib(size), "inputs_mib": inputs_mib(size),
    }
    step = build_step(framework, mode, *make_inputs(size), chunk=chunk, eps=eps)
    rec["info"] = framework_info(framework)
    gc.collect()
    malloc_trim()
    ru_before_first = ru_maxrss()
    t0 = time.perf_counter()
    out = step.run()
    rec["first_step_s"] = time.perf_counter() - t0
    rec["loss"] = step.loss(out)
    del out
    step.reset()
    ru_after_first = ru_maxrss()
    out, seconds, before, peak = measured_step(step.run)
    if before is not None and peak is not None:
        rec["method"] = "second step: VmHWM reset after a warm-up step; before = VmRSS at the reset"
    else:
        before, peak = ru_before_first, ru_after_first
        rec["method"] = "ru_maxrss before/after the first step (compilation included); time of the second step"
    del out
    step.reset()
    rec["time_s"] = seconds
    rec["peak_mib"] = peak / MIB
    rec["peak_before_mib"] = before / MIB
    rec["extra_mib"] = max(0.0, (peak - before) / MIB)
    rec["ru_maxrss_mib"] = ru_maxrss() / MIB
    return rec


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``task: "linear"`` worker of ``python -m smoothloss.bench --worker``."""
    try:
        return measure(spec["framework"], spec["mode"], tuple(spec["size"]), spec.get("chunk"),
                       spec.get("smoothing", SMOOTHING))
    except Exception as exc:  # reported in the JSON, not as a crash
        return {"framework": spec["framework"], "mode": spec["mode"], "size": spec["size"],
                "error": f"{type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------- runs (parent)


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median time, largest peak, median before, largest extra over the runs of one path.

    >>> s = summarise_runs([{"time_s": 2.0, "peak_mib": 10.0, "peak_before_mib": 4.0, "loss": 1.0},
    ...                     {"time_s": 1.0, "peak_mib": 12.0, "peak_before_mib": 5.0, "loss": 1.0},
    ...                     {"error": "boom"}])
    >>> s["time_s"], s["peak_mib"], s["peak_before_mib"], s["extra_mib"], s["runs"], s["failed"]
    (1.5, 12.0, 4.5, 7.0, 2, 1)
    """
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": len(ok), "failed": len(runs) - len(ok)}
    if not ok:
        out["error"] = next((r["error"] for r in runs), "no runs")
        return out
    times = [r["time_s"] for r in ok]
    extras = [max(0.0, r["peak_mib"] - r["peak_before_mib"]) for r in ok]
    out.update({
        "time_s": statistics.median(times), "time_samples_s": times,
        "peak_mib": max(r["peak_mib"] for r in ok), "peak_samples_mib": [r["peak_mib"] for r in ok],
        "peak_before_mib": statistics.median(r["peak_before_mib"] for r in ok),
        "extra_mib": max(extras), "extra_samples_mib": extras,
        "loss": ok[0]["loss"],
    })
    return out


def summarise_entry(framework: str, size: Sequence[int], chunk: int | None,
                    runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One (framework, size): the paths' summaries, the ratios chunked ÷ unchunked and
    chunked ÷ builtin (where the builtin path ran), every run."""
    u, c = summarise_runs(runs["unchunked"]), summarise_runs(runs["chunked"])
    b = summarise_runs(runs["builtin"]) if runs.get("builtin") else None
    entry: dict[str, Any] = {
        "framework": framework, "size": [int(s) for s in size], "chunk": chunk,
        "chunk_rows": chunk_rows(size, chunk, framework), "logits_mib": logits_mib(size),
        "inputs_mib": inputs_mib(size), "unchunked": u, "chunked": c, "runs": runs,
    }
    # chunked ÷ each other path that ran: "time_ratio", "time_ratio_builtin", "time_ratio_cce", ...
    for mode, suffix in (("unchunked", ""), ("builtin", "_builtin"), (CCE, "_cce")):
        if mode != "unchunked" and not runs.get(mode):
            continue
        base = u if mode == "unchunked" else summarise_runs(runs[mode])
        if mode != "unchunked":
            entry[mode] = base
        for name, field in (("time_ratio", "time_s"), ("peak_ratio", "peak_mib"), ("extra_ratio", "extra_mib")):
            entry[name + suffix] = ratio(c.get(field), base.get(field))
    if "loss" in u and "loss" in c:  # (not CCE's: it has no smoothing)
        same = [abs(p["loss"] - u["loss"]) <= 1e-4 * max(1.0, abs(u["loss"])) for p in (c, b) if p and "loss" in p]
        entry["losses_match"] = bool(all(same))
    errors = [f"{r.get('mode')}: {r['error']}" for rs in runs.values() for r in rs if "error" in r]
    if errors:
        entry["errors"] = errors
    return entry


def run(frameworks: Sequence[str], sizes: Sequence[Sequence[int]], chunk: int | None = None, repeats: int = 3,
        eps: float = SMOOTHING, threads: int | None = None, timeout_s: float = 3600.0,
        on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every (framework, size): ``repeats`` fresh-process runs of each path, alternated.

    Returns ``{"settings": ..., "results": [summarise_entry(...), ...]}``; frameworks that
    are not installed are listed under ``settings["skipped"]``.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    todo = [f for f in frameworks if installed(f)]
    skipped = [f for f in frameworks if f not in todo]
    for f in skipped:
        log(f"linear {f}: not installed, skipped")
    cce_missing = cce_importable() if "torch" in todo else None
    if cce_missing:
        log(f"linear torch: Cut Cross-Entropy not measured ({cce_missing})")
    settings = {
        "sizes": [[int(s) for s in size] for size in sizes], "frameworks": todo, "skipped": skipped,
        "cce": cce_missing or "measured (torch)", "ignore_index": IGNORE_INDEX, "ignore_every": IGNORE_EVERY,
        "chunk": chunk, "repeats": repeats, "smoothing": eps, "threads": threads, "dtype": "float32",
        "order": "per repeat r: unchunked, builtin, chunked[, cce] if r is even, else the reverse",
        "method": "fresh process per run; warm-up step, VmHWM reset, measured step (time and peak)",
    }
    results = []
    for fw in todo:
        for size in sizes:
            modes = MODES + ((CCE,) if fw == "torch" and not cce_missing else ())
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for r in range(repeats):
                for mode in (modes if r % 2 == 0 else modes[::-1]):
                    rec = run_worker({"task": "linear", "framework": fw, "mode": mode, "size": list(size),
                                       "chunk": chunk, "smoothing": eps, "threads": threads}, timeout_s)
                    rec.setdefault("framework", fw)
                    rec.setdefault("mode", mode)
                    rec["repeat"] = r
                    runs[mode].append(rec)
                    if "error" in rec:
                        msg = f"FAILED {rec['error']}"
                    else:
                        msg = (f"{rec['time_s']:.4g} s, peak {rec['peak_mib']:.1f} MiB "
                               f"(before {rec['peak_before_mib']:.1f}, extra {rec['extra_mib']:.1f})")
                    log(f"linear {fw:<10} {size_name(size):>16} {mode:<9} #{r + 1}: {msg}")
                    if on_run is not None:
                        on_run(rec)
            results.append(summarise_entry(fw, size, chunk, runs))
    return {"settings": settings, "results": results}


def failed(linear: dict[str, Any] | None) -> bool:
    """Whether any run of a linear report failed."""
    return bool(linear) and any(e.get("errors") for e in linear["results"])


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``N H V [chunk_size] [--frameworks ...] [--repeats R]``: one JSON line per run, then a
    summary line per framework; 1 if a run failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m smoothloss.bench.linear",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("n", type=int, help="rows N")
    p.add_argument("h", type=int, help="hidden size H")
    p.add_argument("v", type=int, help="classes V")
    p.add_argument("chunk", nargs="?", default="None", help="chunk_size (default None: the library's default)")
    p.add_argument("--frameworks", default="torch", help=f"comma-separated subset of {','.join(FRAMEWORKS)} "
                   "(default: torch)")
    p.add_argument("--repeats", type=int, default=1, help="runs per path, alternated (default 1)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (as python -m smoothloss bench)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to each run")
    p.add_argument("--json", default=None, help="also write the whole result to this file")
    args = p.parse_args(argv)
    if args.n < 1 or args.h < 1 or args.v < 2:
        p.error("N and H must be >= 1 and V >= 2")
    chunk = None if args.chunk in ("None", "none", "") else int(args.chunk)
    if chunk is not None and chunk < 1:
        p.error("chunk_size must be >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    fws = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in fws if f not in FRAMEWORKS]
    if unknown:
        p.error(f"unknown framework(s) {unknown}; choose from {list(FRAMEWORKS)}")
    size = (args.n, args.h, args.v)
    result = run(fws, [size], chunk, args.repeats, threads=args.threads, timeout_s=args.timeout,
                 on_run=lambda rec: print(json.dumps(rec, default=str), flush=True))
    for e in result["results"]:
        u, c = e["unchunked"], e["chunked"]
        if "error" in u or "error" in c:
            print(f"{e['framework']} N={args.n} H={args.h} V={args.v}: failed: {u.get('error') or c.get('error')}")
            continue
        r = {k: "—" if e[k] is None else f"{e[k]:.2f}" for k in ("peak_ratio", "extra_ratio", "time_ratio")}
        print(f"{e['framework']} N={args.n} H={args.h} V={args.v}: "
              f"peak {c['peak_mib']:.0f} / {u['peak_mib']:.0f} MiB = {r['peak_ratio']}; "
              f"extra {c['extra_mib']:.0f} / {u['extra_mib']:.0f} MiB = {r['extra_ratio']}; "
              f"time {c['time_s']:.3g} / {u['time_s']:.3g} s = {r['time_ratio']} (median of {c['runs']})")
    if args.json:
        write_json(args.json, result)
    return 1 if failed(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
