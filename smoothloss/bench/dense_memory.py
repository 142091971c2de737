"""The dense harness's memory measurement: the extra memory of one forward+backward step beyond
its inputs, in a fresh subprocess or (``--quick``) on the timing's own steps; the method is
described in ``smoothloss.bench.dense``'s docstring (Memory). Also the inputs every dense
step is built on (:func:`_inputs`) and the logits' size in MiB.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smoothloss.bench.common import MIB, hwm_resettable, malloc_trim, measured_step, ru_maxrss
from smoothloss.bench.dense_steps import STEP_BUILDERS, Steps


def logits_mib(size: Sequence[int]) -> float:
    return size[0] * size[1] * 4 / MIB


def _inputs(size: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    b, k = size
    rng = np.random.default_rng(seed + 1000003 * b + k)
    x = rng.standard_normal((b, k), dtype=np.float32)
    y = rng.integers(0, k, size=(b,), dtype=np.int64)
    return x, y


def _torch_warmup_calls() -> int:
    """The eager calls a torch call signature makes before its compiled kernels run."""
    from smoothloss.backends.torch_compiled import WARMUP_CALLS

    return WARMUP_CALLS


def _measure_memory(framework: str, key: str, size: tuple[int, int], eps: float, fresh: bool,
                    device: str = "cpu", steps: Steps | None = None) -> dict[str, Any]:
    """The extra memory of one step of ``key`` at ``size``. ``steps``: the timing's own steps at this
    size, warmed up and compiled already (--quick, in-process): measured as they are, with no warm-up
    or compilation of new steps."""
    rec: dict[str, Any] = {
        "framework": framework, "implementation": key, "size": list(size), "logits_mib": logits_mib(size),
        "fresh_process": fresh, "device": device,
    }
    if steps is not None:
        rec["reused_timing_steps"] = True
        try:
            step = steps.steps[key]
            if device != "cpu" and key in steps.extra:  # jax off the CPU: XLA's account of the compiled step
                _xla_account(rec, steps, key)
            _measure_built(rec, steps, step, device, fresh)
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec
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
        if framework == "torch" and key.startswith("smoothloss"):  # past the signature's eager warm-up calls
            for _ in range(_torch_warmup_calls()):
                step()
                steps.reset()
        rec["extra_mib_first_step_ru_maxrss"] = (ru_maxrss() - ru0) / MIB
        if key in steps.extra:  # jax: XLA's own account of the compiled step
            _xla_account(rec, steps, key)
        _measure_built(rec, steps, step, device, fresh)
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    return rec


def _xla_account(rec: dict[str, Any], steps: Steps, key: str) -> None:
    """Into ``rec``: XLA's memory analysis of ``key``'s compiled step (jax), where it has one."""
    ma = steps.extra[key]()
    if ma is not None:
        rec["xla_temp_mib"] = ma.temp_size_in_bytes / MIB
        rec["xla_output_mib"] = ma.output_size_in_bytes / MIB


def _measure_built(rec: dict[str, Any], steps: Steps, step: Callable[[], Any], device: str, fresh: bool) -> None:
    """Into ``rec``: the extra memory of ``step``, compiled and warmed up already."""
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


def _device_memory(rec: dict[str, Any], steps: Steps, step: Callable[[], Any], device: str) -> None:
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


def _memory_text(rec: dict[str, Any]) -> str:
    if rec.get("extra_mib") is not None:
        return f"{rec['extra_mib']:.2f} MiB beyond inputs (logits {logits_mib(rec['size']):.2f} MiB)"
    return f"FAILED {rec.get('error')}"
