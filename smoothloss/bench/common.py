"""What both harnesses share: logging, ratios, the subprocess that runs one measurement, and
the resident-set probes of the memory measurements.

Imports neither harness (``dense`` and ``linear`` import this module, ``cli`` imports all
three) and no framework at module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FRAMEWORKS = ("torch", "jax", "tensorflow")
MIB = float(1 << 20)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # smoothloss/
WORKER_MODULE = "smoothloss.bench"  # ``python -m smoothloss.bench --worker SPEC`` runs one measurement


def log(msg: str) -> None:
    """A progress line on stderr; workers' ``[bench]`` lines are relayed by :func:`run_worker`."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def fmt_ms(v: float | None) -> str:
    """Milliseconds to three significant digits or so.

    >>> fmt_ms(123.4), fmt_ms(12.34), fmt_ms(1.234), fmt_ms(0.1234), fmt_ms(None)
    ('123', '12.3', '1.23', '0.123', '—')
    """
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def size_name(size: Sequence[int]) -> str:
    """``(8192, 1024, 65536)`` → ``"8192×1024×65536"``.

    >>> size_name((4, 3, 5)), size_name([32, 10])
    ('4×3×5', '32×10')
    """
    return "×".join(str(int(s)) for s in size)


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------- memory


def rss_now_and_hwm() -> tuple[float, float] | None:
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


RSS_SLACK = 512 * 1024  # bytes: the kernel's per-CPU resident-set counters are read approximately


def hwm_resettable() -> bool:
    """Whether this platform lets a process reset its resident-set high-water mark (Linux ≥ 4.0)."""
    return os.access("/proc/self/clear_refs", os.W_OK) and rss_now_and_hwm() is not None


def reset_hwm(tries: int = 20) -> bool:
    """Reset the resident-set high-water mark to the current resident set (Linux ≥ 4.0).

    Another thread (XLA's, TensorFlow's) can allocate and free between the reset and the check
    that it took effect; the reset is then written again, up to ``tries`` times. The kernel keeps
    the resident set in per-CPU counters that it reads approximately (tens of pages per CPU), so
    the check allows ``RSS_SLACK`` of difference."""
    for attempt in range(tries):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        now = rss_now_and_hwm()
        if now is None:
            return False
        if now[1] <= now[0] + RSS_SLACK:  # the reset took effect
            return True
        time.sleep(0.001 * (attempt + 1))
    return False


def ru_maxrss() -> float:
    """The process's peak resident set in bytes (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) if sys.platform == "darwin" else float(peak) * 1024


def malloc_trim() -> None:
    """Hand freed heap pages back to the OS, so that the next step has to fault its own."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


MMAP_THRESHOLD = 256 * 1024  # bytes: glibc maps every block this large on allocation, unmaps it on free


def relax_mmap_threshold() -> bool:
    """In a process started with ``MALLOC_MMAP_THRESHOLD_`` (:func:`child_env`, ``memory``) whose memory
    is measured: from now on, glibc's thresholds where its dynamic adjustment would have taken them
    (mmap 32 MiB, trim 64 MiB), so that the timings after the memory measurement (--quick) reuse heap
    blocks as in a process with the default allocator; with the 256 KiB threshold every large block
    faults its pages in again at each step, which slows a step up to tenfold. False where there is
    no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 64 << 20))  # M_MMAP_, M_TRIM_THRESHOLD
        malloc_trim()
        return ok
    return False


def measured_step(run: Callable[[], Any]) -> tuple[Any, float, float | None, float | None]:
    """``gc.collect``, ``malloc_trim``, high-water-mark reset, then one ``run()``: its output (for
    the caller to drop), its seconds, the resident set at the reset and the high-water mark after
    it, in bytes; the last two None where the reset is unavailable."""
    gc.collect()
    malloc_trim()
    probed = reset_hwm()
    before = rss_now_and_hwm()[0] if probed else None  # type: ignore[index]
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    peak = rss_now_and_hwm()[1] if probed else None  # type: ignore[index]
    return out, seconds, before, peak


# --------------------------------------------------------------------------- subprocesses


def framework_info(framework: str) -> dict[str, Any]:
    """The framework's threads and devices, as this process sees them (imports the framework)."""
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


def threads_text(framework: str, info: dict[str, Any], requested: int | None) -> str:
    """'torch: 2 intra-op threads' from a worker's :func:`framework_info` (XLA:CPU has no count)."""
    if framework == "torch" and "torch_threads" in info:
        n = info["torch_threads"]
        return f"torch: {n} intra-op thread{'' if n == 1 else 's'}"
    if framework == "tensorflow" and "tf_intra_op_threads" in info:
        n = info["tf_intra_op_threads"]
        return f"TensorFlow: {n or 'automatic'} intra-op thread{'' if n == 1 else 's'}"
    if framework == "jax":
        return "XLA:CPU: " + ("multi-threaded Eigen off" if requested == 1 else "default threading")
    return f"{framework}: threads unknown"


LOAD_LIMIT_START = 0.5  # 1-minute load average above which another process is competing before we start


def load_warning(when: str, load1: float | None, limit: float, threads: int | None = None) -> str | None:
    """The warning for a 1-minute load average above ``limit`` at ``when`` ("the start", "the
    end"), or None. ``threads``: how many threads this run used (said at the end, where our own
    workers count in the average)."""
    if load1 is None or load1 <= limit:
        return None
    ours = f" (this run used {threads} thread{'' if threads == 1 else 's'})" if threads else ""
    return (f"load average {load1:.1f} at {when}{ours}: another process is using the CPUs; "
            "these timings are not reliable")


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def child_env(framework: str, memory: bool = False, threads: int | None = None,
              device: str = "cpu") -> dict[str, str]:
    """The environment of a worker; ``memory``: one that measures memory."""
    env = dict(os.environ)
    root = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if memory:
        # A fixed mmap threshold: glibc otherwise raises it (up to 32 MiB) after the first
        # large free, and later steps reuse already-resident heap pages that the resident
        # set cannot see being allocated. With it, every block >= 256 KiB is mapped on
        # allocation and unmapped on free.
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    if framework == "tensorflow":
        env["KERAS_BACKEND"] = "tensorflow"
        if memory:
            # TensorFlow's oneDNN CPU allocator keeps large blocks in a BFC pool, which hides
            # a step's allocations from the resident set; the system allocator does not.
            env["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = "1"
    if framework == "jax":
        if device == "cpu":
            env.setdefault("JAX_PLATFORMS", "cpu")
        else:  # 'cuda' (JAX's platform name for NVIDIA GPUs), 'rocm', 'tpu'
            env["JAX_PLATFORMS"] = device.partition(":")[0]
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
        if framework == "jax" and threads == 1:  # XLA:CPU has no thread-count flag; this one is on/off
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


def apply_threads(framework: str, threads: int | None) -> None:
    """In the worker, before anything runs: the intra-op threads of torch and TensorFlow."""
    if not threads:
        return
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    elif framework == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
    # jax: XLA_FLAGS, set in the environment before jax is imported


def run_worker(spec: dict[str, Any], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter (``env``: environment variables to set in it besides
    :func:`child_env`'s); relay its ``[bench]`` lines; return its JSON."""
    with tempfile.TemporaryDirectory(prefix="smoothloss-bench-") as tmp:
        out_path = Path(tmp) / "result.json"
        spec = {**spec, "out": str(out_path)}
        env = {**child_env(spec["framework"],
                           spec["task"] in ("memory", "linear") or bool(spec.get("memory_in_process")),
                           spec.get("threads"), spec.get("device", "cpu")), **(env or {})}
        tail: list[str] = []
        with subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, "--worker", json.dumps(spec)],
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
