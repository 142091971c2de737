"""The prepared GPU run (``tools/gpu-check``): one command, one Markdown file.

1. ``python -m smoothloss check --device DEV --frameworks torch,jax-jit`` in a
   subprocess (its output goes into the report verbatim; its exit status counts).
2. Dense loss, PyTorch: forward+backward of bf16 logits N×V with int64 labels, mean,
   ``label_smoothing`` 0.1 and 0.0: ``smoothloss.torch.cross_entropy`` against
   ``torch.nn.functional.cross_entropy`` (and Liger's ``LigerCrossEntropyLoss``).
3. Linear loss, PyTorch: hidden N×H and weight V×H in bf16:
   ``smoothloss.torch.linear_cross_entropy`` against ``F.cross_entropy(h @ W.T)``
   (and Liger's ``LigerFusedLinearCrossEntropyLoss``, CCE's ``linear_cross_entropy``).
4. Dense loss, JAX, under ``jax.jit(jax.value_and_grad(...))``:
   ``smoothloss.jax.softmax_cross_entropy_with_integer_labels`` against optax.

Each timed call is one forward+backward; the implementations take turns (interleaved
rounds, the order rotated), after warm-up calls (smoothloss compiles its kernels from
the 9th call of a call signature under the default compile mode "auto": ten warm-up
calls on a small input of the same signature, then real-size ones), and the median is
reported. The loss of each implementation is compared with a float32 reference (the
same bf16 inputs upcast, in row chunks), its gradient with the reference
implementation's. A row whose loss (any implementation) or whose smoothloss gradient
differs by more than the bf16 tolerance fails the run.

Every implementation is guarded: an error gives ``failed: ...`` in its row, a missing
wheel ``not installed``. A time budget (``--budget``, default 420 s for the whole run)
cuts warm-up and repeats, and skips a size whose estimated cost does not fit.

Exit status: 0 if the check passed and no row failed; 1 otherwise, or if ``--device
cuda`` is asked and torch sees no CUDA device.
"""

# ruff: noqa: B023 - the closures made in a loop are called in the same iteration

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from smoothloss.bench.common import fmt_ms, fmt_ratio  # noqa: E402 - the bench's own formats (stdlib only)

DEFAULT_SIZES = "8192x128256,1024x32000"
DEFAULT_LINEAR_SIZES = "8192x2048x128256,1024x2048x32000"
QUICK_SIZES = "1024x32000"
QUICK_LINEAR_SIZES = "256x256x8192"
DEFAULT_SMOOTHING = "0.1,0.0"
DEFAULT_BUDGET_S = 420.0
BF16_TOL = 2e-2
MIB = float(1 << 20)
PROXY_CALLS = 10  # > smoothloss's 8 eager warm-up calls per signature (SMOOTHLOSS_COMPILE_WARMUP)
NOT_INSTALLED = "not installed"


# --------------------------------------------------------------------------- arguments


def parse_size(text: str, parts: int, hidden: int | None = None) -> tuple[int, ...]:
    """``"NxV"`` (parts=2), or ``"NxHxV"`` (parts=3; ``"NxV"`` takes H from ``hidden``)."""
    fields = text.strip().lower().replace("×", "x").split("x")
    try:
        values = tuple(int(f) for f in fields)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected integers joined by 'x'") from None
    if parts == 3 and len(values) == 2 and hidden is not None:
        values = (values[0], hidden, values[1])
    if len(values) != parts or min(values) < 1:
        want = "NxV" if parts == 2 else "NxHxV (or NxV with --hidden)"
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected {want} of positive integers")
    if values[-1] < 2:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: at least 2 classes")
    return values


def parse_sizes(text: str, parts: int, hidden: int | None = None) -> list[tuple[int, ...]]:
    if text.strip().lower() in ("", "none"):
        return []
    return [parse_size(t, parts, hidden) for t in text.split(",") if t.strip()]


def parse_floats(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list of numbers {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"label smoothing values must lie in [0, 1], got {text!r}")
    return values


def default_out(environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    out_dir = environ.get("OUT")
    return str(Path(out_dir) / "gpu-check.md") if out_dir else "gpu-check.md"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/gpu-check",
        description="smoothloss GPU run: conformance check, dense and linear benchmarks, one Markdown report.",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: cuda")
    p.add_argument("--out", default=None, help="Markdown file (default: $OUT/gpu-check.md if $OUT is set, else ./gpu-check.md)")
    p.add_argument("--sizes", default=None, help=f"dense sizes NxV, comma-separated (default {DEFAULT_SIZES}; 'none' for no dense bench)")
    p.add_argument("--linear-sizes", default=None,
                   help=f"linear sizes NxHxV, or NxV with --hidden (default {DEFAULT_LINEAR_SIZES}; 'none' for none)")
    p.add_argument("--hidden", type=int, default=2048, help="H for linear sizes given as NxV (default 2048)")
    p.add_argument("--smoothing", type=parse_floats, default=parse_floats(DEFAULT_SMOOTHING),
                   help=f"label_smoothing values (default {DEFAULT_SMOOTHING})")
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes for a CPU run: --sizes {QUICK_SIZES} --linear-sizes {QUICK_LINEAR_SIZES}, --repeats 5")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per implementation (default 20, --quick 5)")
    p.add_argument("--warmup", type=int, default=10, help="real-size warm-up calls per implementation, at most (default 10)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f})")
    p.add_argument("--check-frameworks", default="torch,jax-jit", help="drivers for step 1 (default torch,jax-jit; 'none' skips it)")
    p.add_argument("--check-timeout", type=float, default=None, help="seconds for step 1 (default: half the budget, at most 240)")
    p.add_argument("--frameworks", default="torch,jax", help="benchmarks to run: torch, jax (default torch,jax)")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.dense_sizes = parse_sizes(args.sizes if args.sizes is not None else (QUICK_SIZES if args.quick else DEFAULT_SIZES), 2)
        lin = args.linear_sizes if args.linear_sizes is not None else (QUICK_LINEAR_SIZES if args.quick else DEFAULT_LINEAR_SIZES)
        args.lin_sizes = parse_sizes(lin, 3, args.hidden)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if args.repeats is None:
        args.repeats = 5 if args.quick else 20
    if args.repeats < 1 or args.warmup < 1 or args.budget <= 0:
        p.error("--repeats and --warmup must be >= 1 and --budget > 0")
    args.bench_frameworks = tuple(f.strip() for f in args.frameworks.split(",") if f.strip())
    unknown = set(args.bench_frameworks) - {"torch", "jax"}
    if unknown:
        p.error(f"--frameworks: unknown {sorted(unknown)} (torch, jax)")
    if args.out is None:
        args.out = default_out()
    return args


# --------------------------------------------------------------------------- results and Markdown


@dataclasses.dataclass
class Row:
    """One implementation at one size and smoothing value."""

    impl: str
    size: str
    eps: float
    ms: float | None = None
    ratio: float | None = None
    mem_mib: float | None = None
    loss: float | None = None
    loss_rel: float | None = None
    grad_rel: float | None = None
    runs: str = ""
    note: str | None = None  # "not installed ...", "failed: ...", "skipped: ...", "n/a: ..."
    ours: bool = False  # a smoothloss row (or the reference): a failure of it fails the run
    reference: bool = False

    def failed(self, tol: float = BF16_TOL) -> bool:
        """Whether this row fails the run: a loss beyond ``tol`` (any implementation), a
        smoothloss gradient beyond ``tol``, or a smoothloss/reference row that raised."""
        if self.note is not None:
            return self.note.startswith("failed") and (self.ours or self.reference)
        if self.loss is None or not math.isfinite(self.loss):
            return True
        if self.loss_rel is not None and not self.loss_rel <= tol:
            return True
        return self.ours and self.grad_rel is not None and not self.grad_rel <= tol


@dataclasses.dataclass
class CheckResult:
    command: str
    returncode: int | None  # None: not run (skipped) or timed out
    seconds: float
    output: str
    note: str | None = None

    @property
    def passed(self) -> bool:
        return self.returncode == 0 or (self.returncode is None and self.note == "skipped")


def fmt_mib(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if v < 10 else f"{v:,.0f}"


def fmt_rel(v: float | None, tol: float = BF16_TOL) -> str:
    if v is None:
        return "—"
    text = f"{v:.1e}"
    return text if v <= tol else f"**{text} FAIL**"


def fmt_loss(v: float | None) -> str:
    return "—" if v is None else f"{v:.5f}"


def escape_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(escape_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


BENCH_HEADERS = ("implementation", "size", "ε", "median ms", "× reference", "peak extra MiB", "loss",
                 "loss rel diff", "grad rel diff", "runs")
BENCH_RIGHT = (False, False, True, True, True, True, True, True, True, False)


def bench_table(rows: Sequence[Row], tol: float = BF16_TOL) -> str:
    cells = []
    for r in rows:
        name = f"**{r.impl}**" if r.ours else r.impl
        if r.note is not None:
            cells.append([name, r.size, f"{r.eps:g}", r.note, "—", "—", "—", "—", "—", r.runs or "—"])
            continue
        cells.append([
            name, r.size, f"{r.eps:g}", fmt_ms(r.ms), fmt_ratio(r.ratio), fmt_mib(r.mem_mib), fmt_loss(r.loss),
            fmt_rel(r.loss_rel, tol), "—" if r.reference else fmt_rel(r.grad_rel, tol), r.runs or "—",
        ])
    return md_table(BENCH_HEADERS, cells, BENCH_RIGHT)


BENCH_LEGEND = (
    "median ms: median over the timed calls of one forward+backward (synchronized on CUDA), the "
    "implementations taking turns; × reference: that median over the reference row's (the first row "
    "of each size and ε); peak extra MiB: the peak memory of a call over what was allocated before it "
    "(inputs, labels), gradients included (CUDA: torch.cuda.max_memory_allocated; torch on the CPU: not "
    "measured; JAX: XLA's temp + output buffers of the compiled step); loss rel diff: against a "
    "float32 reference of the same bf16 inputs; grad rel diff: ‖g − g_ref‖ / ‖g_ref‖ against the "
    "reference row's gradient (for the linear loss the larger of d_hidden's and d_weight's); "
    "runs: timed calls + warm-up calls at the real size. FAIL above {tol:g} (bf16)."
)


def render_markdown(header: Sequence[str], check: CheckResult | None,
                    sections: Sequence[tuple[str, Sequence[Row]]], passed: bool | None, tol: float = BF16_TOL) -> str:
    """The report: header lines, the check's output in a code block, one table per section.
    ``passed`` None: a report written while the run goes on (it says so)."""
    out = ["# smoothloss GPU check", ""]
    out += [f"- {line}" for line in header]
    out.append("")
    result = "INCOMPLETE (the run was still going when this was written)" if passed is None else (
        "PASS" if passed else "FAIL")
    out.append(f"**Result: {result}**")
    out.append("")
    if check is not None:
        out.append(f"## Conformance: `{check.command}`")
        out.append("")
        if check.note == "skipped":
            out.append("skipped (--check-frameworks none)")
        else:
            status = "PASS" if check.passed else "FAIL"
            detail = f"exit status {check.returncode}" if check.returncode is not None else (check.note or "not run")
            out.append(f"{status} ({detail}, {check.seconds:.1f} s)")
            out.append("")
            out.append("```text")
            out.append(check.output.rstrip("\n"))
            out.append("```")
        out.append("")
    for title, rows in sections:
        out.append(f"## {title}")
        out.append("")
        out.append(bench_table(rows, tol) if rows else "(no sizes)")
        out.append("")
    out.append(BENCH_LEGEND.format(tol=tol))
    out.append("")
    return "\n".join(out)


def overall_pass(check: CheckResult | None, sections: Sequence[tuple[str, Sequence[Row]]], tol: float = BF16_TOL) -> bool:
    if check is not None and not check.passed:
        return False
    return not any(r.failed(tol) for _, rows in sections for r in rows)


# --------------------------------------------------------------------------- step 1: the check


def run_check(device: str, frameworks: str, timeout: float) -> CheckResult:
    cmd = [sys.executable, "-m", "smoothloss", "check", "--device", device, "--frameworks", frameworks]
    shown = f"python -m smoothloss check --device {device} --frameworks {frameworks}"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log(f"step 1: {shown} (timeout {timeout:.0f} s)")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return CheckResult(shown, None, time.perf_counter() - t0, text + err, note=f"timed out after {timeout:.0f} s")
    except OSError as e:
        return CheckResult(shown, None, time.perf_counter() - t0, "", note=f"failed to start: {e}")
    seconds = time.perf_counter() - t0
    output = proc.stdout
    if proc.returncode != 0 and proc.stderr.strip():
        output += "\n--- stderr (last 40 lines) ---\n" + "\n".join(proc.stderr.rstrip().splitlines()[-40:])
    return CheckResult(shown, proc.returncode, seconds, output)


# --------------------------------------------------------------------------- timing helpers


def log(msg: str) -> None:
    print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"failed: {type(e).__name__}: {text}" if text else f"failed: {type(e).__name__}"


class Memory:
    """Peak memory of a call above what was allocated before it: on CUDA only (torch's
    allocator statistics). On the CPU there is no per-call peak to read without a
    subprocess per measurement (resetting VmHWM through /proc/self/clear_refs made every
    later call of the process slower on the machine this was written on), so "—"."""

    def __init__(self, device: str) -> None:
        self.device = device

    def start(self) -> float | None:
        if self.device != "cuda":
            return None
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return float(torch.cuda.memory_allocated())

    def peak(self, base: float | None) -> float | None:
        if base is None or self.device != "cuda":
            return None
        import torch

        return max(0.0, torch.cuda.max_memory_allocated() - base) / MIB


@dataclasses.dataclass
class Impl:
    """A benchmarked implementation: ``prepare()`` (untimed) gives the call's arguments,
    ``run(args)`` does forward+backward and returns ``(loss, grads)``."""

    name: str
    prepare: Callable[[], Any] | None = None
    run: Callable[[Any], tuple[Any, tuple[Any, ...]]] | None = None
    warm: Callable[[], None] | None = None  # the small same-signature warm-up calls
    note: str | None = None  # set: not run
    ours: bool = False
    reference: bool = False


def plan_calls(estimate: float, n_impls: int, seconds: float, warmup: int, repeats: int) -> tuple[int, int] | None:
    """Real-size ``(warmup, repeats)`` per implementation that fit ``seconds`` at ``estimate``
    seconds per call (a third more for compiles and checks), or None if not even one of each."""
    per_round = max(estimate, 1e-6) * max(n_impls, 1) * 1.35
    calls = int(seconds // per_round)
    if calls < 2:
        return None
    warm = max(1, min(warmup, calls // 3))
    return warm, max(1, min(repeats, calls - warm))


def bench_case(impls: Sequence[Impl], size: str, eps: float, *, sync: Callable[[], None], memory: Memory,
               estimate: float, seconds: float, warmup: int, repeats: int, ref_loss: float | None,
               grad_diff: Callable[[tuple[Any, ...], tuple[Any, ...]], float | None]) -> list[Row]:
    """Warm up, then interleaved timed rounds of all runnable implementations; one Row each."""
    rows = {i.name: Row(i.name, size, eps, note=i.note, ours=i.ours, reference=i.reference) for i in impls}
    live = [i for i in impls if i.note is None]
    if not live:
        return list(rows.values())
    plan = plan_calls(estimate, len(live), seconds, warmup, repeats)
    if plan is None:
        for i in live:
            rows[i.name].note = f"skipped: about {estimate:.1f} s per call, over the time budget"
        return list(rows.values())
    warm_n, reps = plan
    t_end = time.perf_counter() + seconds
    for i in live:  # warm-up: the small same-signature calls, then real-size calls
        try:
            if i.warm is not None:
                i.warm()
            for _ in range(warm_n):
                loss, grads = i.run(i.prepare())
                del loss, grads
            sync()
        except Exception as e:  # noqa: BLE001 - the row says what failed
            rows[i.name].note = short_error(e)
    live = [i for i in live if rows[i.name].note is None]
    times: dict[str, list[float]] = {i.name: [] for i in live}
    peaks: dict[str, list[float]] = {i.name: [] for i in live}
    ref_grads: tuple[Any, ...] | None = None
    ref_impl = next((i for i in live if i.reference), None)
    for r in range(reps if live else 0):
        if r > 0 and time.perf_counter() > t_end:
            break
        order = live[r % len(live):] + live[:r % len(live)] if r else live  # round 0: the reference first
        for i in order:
            if rows[i.name].note is not None:
                continue
            try:
                args = i.prepare()
                base = memory.start()
                sync()
                t0 = time.perf_counter()
                loss, grads = i.run(args)
                sync()
                times[i.name].append(time.perf_counter() - t0)
                peak = memory.peak(base)
                if peak is not None:
                    peaks[i.name].append(peak)
                del args
                if r == 0:
                    row = rows[i.name]
                    row.loss = float(loss.detach().float().item()) if hasattr(loss, "detach") else float(loss)
                    if ref_loss is not None:
                        row.loss_rel = abs(row.loss - ref_loss) / max(abs(ref_loss), 1e-30)
                    if i is ref_impl:
                        ref_grads = grads
                    elif ref_grads is not None:
                        row.grad_rel = grad_diff(grads, ref_grads)
                del loss, grads
            except Exception as e:  # noqa: BLE001 - the row says what failed
                rows[i.name].note = short_error(e)
    ref_ms = None
    if ref_impl is not None and times.get(ref_impl.name):
        ref_ms = statistics.median(times[ref_impl.name]) * 1e3
    for i in live:
        row = rows[i.name]
        if row.note is not None or not times[i.name]:
            continue
        row.ms = statistics.median(times[i.name]) * 1e3
        row.ratio = None if ref_ms is None else row.ms / ref_ms
        row.mem_mib = max(peaks[i.name]) if peaks[i.name] else None
        row.runs = f"{len(times[i.name])} + {warm_n}"
    return list(rows.values())


def missing(module: str, pip_name: str) -> str | None:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"{NOT_INSTALLED} (pip install {pip_name})"


def available_bytes(device: str) -> float | None:
    """Memory a new allocation can take: on CUDA torch's free device memory plus what its
    cache holds unused; on the CPU /proc/meminfo's MemAvailable; None if unknown."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return float(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return None


def too_big(need: float, device: str, fraction: float = 0.7) -> str | None:
    """The skip note when ``need`` bytes exceed ``fraction`` of what is available."""
    avail = available_bytes(device)
    if avail is None or need <= fraction * avail:
        return None
    return f"skipped: needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"


# --------------------------------------------------------------------------- PyTorch


def _torch_fill(shape: tuple[int, ...], device: str, gen: Any, scale: float = 1.0) -> Any:
    """bf16 standard normal values; on the CPU made in float32 row chunks (bf16 randn is slow)."""
    import torch

    if device == "cuda":
        out = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
        return out.mul_(scale) if scale != 1.0 else out
    out = torch.empty(shape, dtype=torch.bfloat16)
    step = max(1, (1 << 24) // max(1, math.prod(shape[1:])))
    for a in range(0, shape[0], step):
        chunk = torch.randn((min(step, shape[0] - a), *shape[1:]), generator=gen)
        out[a:a + step] = chunk.mul_(scale) if scale != 1.0 else chunk
    return out


def _rel_l2(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ in float32, in row chunks."""
    import torch

    num = torch.zeros((), dtype=torch.float64, device=b.device)
    den = torch.zeros((), dtype=torch.float64, device=b.device)
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    step = max(1, (1 << 24) // max(1, b2.shape[1]))
    for s in range(0, b2.shape[0], step):
        x, y = a2[s:s + step].float(), b2[s:s + step].float()
        num += (x - y).square().sum(dtype=torch.float64)
        den += y.square().sum(dtype=torch.float64)
    return math.sqrt(float(num) / max(float(den), 1e-300))


def _grad_diff(grads: tuple[Any, ...], ref: tuple[Any, ...]) -> float | None:
    diffs = [_rel_l2(g, r) for g, r in zip(grads, ref) if g is not None and r is not None]
    return max(diffs) if diffs else None


def _torch_ref_dense(x: Any, y: Any, eps: float) -> float:
    import torch
    import torch.nn.functional as F

    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = max(1, (1 << 24) // x.shape[1])
    with torch.no_grad():
        for s in range(0, x.shape[0], step):
            total += F.cross_entropy(x[s:s + step].float(), y[s:s + step], label_smoothing=eps, reduction="sum").double()
    return float(total) / x.shape[0]


def _torch_ref_linear(h: Any, w: Any, y: Any, eps: float) -> float:
    import torch
    import torch.nn.functional as F

    total = torch.zeros((), dtype=torch.float64, device=h.device)
    wf = w.float()
    step = max(1, (1 << 24) // w.shape[0])
    with torch.no_grad():
        for s in range(0, h.shape[0], step):
            z = h[s:s + step].float() @ wf.T
            total += F.cross_entropy(z, y[s:s + step], label_smoothing=eps, reduction="sum").double()
    return float(total) / h.shape[0]


def _leaf(t: Any, clone: bool = False) -> Any:
    t = t.detach().clone() if clone else t.detach()
    return t.requires_grad_(True)


def optional_impl(name: str, module: str, pip_name: str, owner: str, device: str,
                  make: Callable[[], Impl], unsupported: str | None = None) -> Impl:
    """The row of a third-party implementation (Liger, CCE): ``make()``, or a row that says
    why not: its wheel is missing, its Triton kernels need CUDA, ``unsupported`` (a case
    it does not compute), or what ``make`` raised."""
    note = missing(module, pip_name)
    if note is None and device != "cuda":
        note = f"n/a: {owner}'s Triton kernels need CUDA"
    if note is None:
        note = unsupported
    if note is not None:
        return Impl(name, note=note)
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - the row says what failed
        return Impl(name, note=short_error(e))


def torch_dense_impls(device: str, x: Any, y: Any, eps: float) -> list[Impl]:
    import torch
    import torch.nn.functional as F

    import smoothloss.torch as st

    px = torch.randn(32, 8192, device=device).to(torch.bfloat16)  # 262,144 logits: past the compile threshold
    py = torch.randint(0, 8192, (32,), device=device)
    xl = _leaf(x)

    def same(args: Any) -> Any:
        xl.grad = None
        return xl

    def dense_run(fn: Callable[..., Any]) -> Callable[[Any], tuple[Any, tuple[Any, ...]]]:
        def run(a: Any) -> tuple[Any, tuple[Any, ...]]:
            loss = fn(a, y)
            loss.backward()
            return loss.detach(), (a.grad,)
        return run

    def warm_with(fn: Callable[..., Any]) -> Callable[[], None]:
        def warm() -> None:
            for _ in range(PROXY_CALLS):
                a = _leaf(px)
                fn(a, py).backward()
        return warm

    f_ref = lambda a, t: F.cross_entropy(a, t, label_smoothing=eps)
    f_ours = lambda a, t: st.cross_entropy(a, t, label_smoothing=eps)
    impls = [
        Impl("F.cross_entropy", lambda: same(None), dense_run(f_ref), None, reference=True),
        Impl("smoothloss.torch.cross_entropy", lambda: same(None), dense_run(f_ours), warm_with(f_ours), ours=True),
    ]
    name = "Liger LigerCrossEntropyLoss"

    def liger() -> Impl:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        loss = LigerCrossEntropyLoss(label_smoothing=eps, reduction="mean")
        # Liger writes the gradient into its input's memory: a fresh copy per call.
        return Impl(name, lambda: _leaf(x, clone=True), dense_run(loss), warm_with(loss))

    impls.append(optional_impl(name, "liger_kernel", "liger-kernel", "Liger", device, liger))
    return impls


def torch_linear_impls(device: str, h: Any, w: Any, y: Any, eps: float) -> list[Impl]:
    import torch
    import torch.nn.functional as F

    import smoothloss.torch as st

    ph = torch.randn(64, 64, device=device).to(torch.bfloat16)
    pw = (torch.randn(8192, 64, device=device) / 8).to(torch.bfloat16)
    pyy = torch.randint(0, 8192, (64,), device=device)
    hl, wl = _leaf(h), _leaf(w)

    def same() -> Any:
        hl.grad = None
        wl.grad = None
        return hl, wl

    def fresh() -> Any:
        return _leaf(h, clone=True), _leaf(w, clone=True)

    def lin_run(fn: Callable[..., Any]) -> Callable[[Any], tuple[Any, tuple[Any, ...]]]:
        def run(a: Any) -> tuple[Any, tuple[Any, ...]]:
            hh, ww = a
            loss = fn(hh, ww, y)
            loss.backward()
            return loss.detach(), (hh.grad, ww.grad)
        return run

    def warm_with(fn: Callable[..., Any]) -> Callable[[], None]:
        def warm() -> None:
            for _ in range(PROXY_CALLS):
                a, b = _leaf(ph), _leaf(pw)
                fn(a, b, pyy).backward()
        return warm

    f_ref = lambda a, b, t: F.cross_entropy(a @ b.T, t, label_smoothing=eps)
    f_ours = lambda a, b, t: st.linear_cross_entropy(a, b, t, label_smoothing=eps)
    impls = [
        Impl("F.cross_entropy(h @ W.T)", same, lin_run(f_ref), None, reference=True),
        Impl("smoothloss.torch.linear_cross_entropy", same, lin_run(f_ours), warm_with(f_ours), ours=True),
    ]
    liger_name, cce_name = "Liger LigerFusedLinearCrossEntropyLoss", "CCE linear_cross_entropy"

    def liger() -> Impl:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(label_smoothing=eps, reduction="mean")
        f_liger = lambda a, b, t: flce(b, a, t)
        return Impl(liger_name, fresh, lin_run(f_liger), warm_with(f_liger))

    def cce() -> Impl:
        from cut_cross_entropy import linear_cross_entropy

        return Impl(cce_name, fresh, lin_run(linear_cross_entropy), warm_with(linear_cross_entropy))

    impls.append(optional_impl(liger_name, "liger_kernel", "liger-kernel", "Liger", device, liger))
    impls.append(optional_impl(cce_name, "cut_cross_entropy", "cut-cross-entropy", "CCE", device, cce,
                               unsupported="n/a: CCE has no label_smoothing" if eps != 0.0 else None))
    return impls


def _torch_sync(device: str) -> Callable[[], None]:
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def estimate_call(call_rows: Callable[[int], None], rows: int, per_row: int, sync: Callable[[], None]) -> float:
    """Seconds of one real-size call, from probe calls on the first p rows scaled by
    rows / p: all the rows up to 2**24 elements (where per-call overheads dominate); else
    p = 1, 4, 16, ... until a probe call takes a quarter of a second or p reaches a 32nd
    of the rows, so that a size far too big for the machine costs little to find out."""
    if rows * per_row <= 1 << 24:
        return _probe(lambda: call_rows(rows), sync)
    last, p = max(1, rows // 32), 1
    while True:
        t = _probe(lambda: call_rows(p), sync)
        if t >= 0.25 or p >= last:
            return t * rows / p
        p = min(4 * p, last)


def _probe(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    """Seconds of the second of two calls of ``fn``."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def torch_dense(args: argparse.Namespace, deadline: Deadline, share: float) -> list[Row]:
    import torch
    import torch.nn.functional as F

    device, sync, memory = args.device, _torch_sync(args.device), Memory(args.device)
    step_end = time.perf_counter() + share
    cases = [(s, e) for s in args.dense_sizes for e in args.smoothing]
    rows: list[Row] = []
    done = 0
    for N, V in args.dense_sizes:
        size = f"{N}×{V}"
        # the logits, their gradient, F.cross_entropy's two temporaries, the reference gradient
        big = too_big(5.0 * N * V * 2, device)
        if big is not None:
            log(f"dense torch {size}: {big}")
            for eps in args.smoothing:
                rows.append(Row("F.cross_entropy", size, eps, note=big, reference=True))
            done += len(args.smoothing)
            continue
        gen = torch.Generator(device=device).manual_seed(args.seed)
        try:
            x = _torch_fill((N, V), device, gen)
            y = torch.randint(0, V, (N,), device=device, generator=gen)

            def probe_rows(p: int) -> None:
                F.cross_entropy(_leaf(x[:p]), y[:p], label_smoothing=0.1).backward()

            estimate = estimate_call(probe_rows, N, V, sync)
        except Exception as e:  # noqa: BLE001 - the row says what failed
            for eps in args.smoothing:
                rows.append(Row("F.cross_entropy", size, eps, note=short_error(e), reference=True))
            done += len(args.smoothing)
            continue
        for eps in args.smoothing:
            seconds = max(0.0, min(step_end, deadline.end) - time.perf_counter()) / max(1, len(cases) - done)
            done += 1
            log(f"dense torch {size} ε={eps:g}: about {estimate * 1e3:.1f} ms per call, {seconds:.0f} s")
            try:
                impls = torch_dense_impls(device, x, y, eps)
                plan = plan_calls(estimate, sum(i.note is None for i in impls), seconds, args.warmup, args.repeats)
                ref = _torch_ref_dense(x, y, eps) if plan is not None else None
            except Exception as e:  # noqa: BLE001 - the row says what failed
                rows.append(Row("F.cross_entropy", size, eps, note=short_error(e), reference=True))
                continue
            rows += bench_case(impls, size, eps, sync=sync, memory=memory, estimate=estimate, seconds=seconds,
                               warmup=args.warmup, repeats=args.repeats, ref_loss=ref, grad_diff=_grad_diff)
            del impls
            gc.collect()
        x = y = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def torch_linear(args: argparse.Namespace, deadline: Deadline, share: float) -> list[Row]:
    import torch
    import torch.nn.functional as F

    device, sync, memory = args.device, _torch_sync(args.device), Memory(args.device)
    step_end = time.perf_counter() + share
    cases = [(s, e) for s in args.lin_sizes for e in args.smoothing]
    rows: list[Row] = []
    done = 0
    for N, H, V in args.lin_sizes:
        size = f"{N}×{H}×{V}"
        # the dense path's logits and its temporaries; the inputs, their gradients, the reference's
        big = too_big(4.0 * N * V * 2 + 3.0 * (N + V) * H * 2 + 4.0 * V * H, device)
        if big is not None:
            log(f"linear torch {size}: {big}")
            for eps in args.smoothing:
                rows.append(Row("F.cross_entropy(h @ W.T)", size, eps, note=big, reference=True))
            done += len(args.smoothing)
            continue
        gen = torch.Generator(device=device).manual_seed(args.seed + 1)
        try:
            h = _torch_fill((N, H), device, gen)
            w = _torch_fill((V, H), device, gen, scale=1.0 / math.sqrt(H))
            y = torch.randint(0, V, (N,), device=device, generator=gen)

            def probe_rows(p: int) -> None:
                F.cross_entropy(_leaf(h[:p]) @ _leaf(w).T, y[:p], label_smoothing=0.1).backward()

            estimate = estimate_call(probe_rows, N, H * V, sync)
        except Exception as e:  # noqa: BLE001 - the row says what failed
            for eps in args.smoothing:
                rows.append(Row("F.cross_entropy(h @ W.T)", size, eps, note=short_error(e), reference=True))
            done += len(args.smoothing)
            continue
        for eps in args.smoothing:
            seconds = max(0.0, min(step_end, deadline.end) - time.perf_counter()) / max(1, len(cases) - done)
            done += 1
            log(f"linear torch {size} ε={eps:g}: about {estimate * 1e3:.1f} ms per call, {seconds:.0f} s")
            impls = None
            try:
                impls = torch_linear_impls(device, h, w, y, eps)
                plan = plan_calls(estimate, sum(i.note is None for i in impls), seconds, args.warmup, args.repeats)
                ref = _torch_ref_linear(h, w, y, eps) if plan is not None else None
            except Exception as e:  # noqa: BLE001 - the row says what failed
                rows.append(Row("F.cross_entropy(h @ W.T)", size, eps, note=short_error(e), reference=True))
                continue
            rows += bench_case(impls, size, eps, sync=sync, memory=memory, estimate=estimate, seconds=seconds,
                               warmup=args.warmup, repeats=args.repeats, ref_loss=ref, grad_diff=_grad_diff)
            del impls
            gc.collect()
        h = w = y = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- JAX


def jax_dense(args: argparse.Namespace, deadline: Deadline, share: float) -> list[Row]:
    rows: list[Row] = []
    ref_name, ours_name = "optax.softmax_cross_entropy", "smoothloss.jax.softmax_cross_entropy_with_integer_labels"
    note = missing("jax", "jax")
    if note is None:
        try:
            import jax
            import jax.numpy as jnp

            platform_ = "gpu" if args.device == "cuda" else "cpu"
            dev = jax.devices(platform_)[0]
        except Exception as e:  # noqa: BLE001 - the row says what failed
            note = short_error(e)
    if note is not None:
        for N, V in args.dense_sizes:
            for eps in args.smoothing:
                rows.append(Row(ours_name, f"{N}×{V}", eps, note=note, ours=True))
        return rows
    import smoothloss.jax as sj

    optax_note = missing("optax", "optax")
    optax = None
    if optax_note is None:
        try:
            import optax
        except Exception as e:  # noqa: BLE001 - the row says what failed
            optax_note = short_error(e)

    def block() -> None:
        pass

    step_end = time.perf_counter() + share
    cases = [(s, e) for s in args.dense_sizes for e in args.smoothing]
    done = 0
    for N, V in args.dense_sizes:
        size = f"{N}×{V}"
        big = too_big(4.0 * N * V * 2, args.device)  # the logits and the gradient, before XLA's own
        if big is not None:
            log(f"dense jax {size}: {big}")
            for eps in args.smoothing:
                rows.append(Row(ours_name, size, eps, note=big, ours=True))
            done += len(args.smoothing)
            continue
        try:
            # made by torch (in row chunks on the CPU: XLA's generator holds 5x the output) and
            # handed over by DLPack; then placed on the JAX device asked for
            import torch

            gen = torch.Generator(device=args.device).manual_seed(args.seed + 2)
            tx = _torch_fill((N, V), args.device, gen)
            ty = torch.randint(0, V, (N,), device=args.device, generator=gen).to(torch.int32)
            x, y = jax.device_put((jax.dlpack.from_dlpack(tx), jax.dlpack.from_dlpack(ty)), dev)
            x.block_until_ready()
            tx = ty = None
        except Exception as e:  # noqa: BLE001 - the row says what failed
            for eps in args.smoothing:
                rows.append(Row(ours_name, size, eps, note=short_error(e), ours=True))
            done += len(args.smoothing)
            continue
        chunk = max(1, min(N, (1 << 24) // V))
        nchunks = N // chunk

        @jax.jit
        def ref_loss(x: Any, y: Any, eps: Any) -> Any:
            xs = x[: nchunks * chunk].reshape(nchunks, chunk, V)
            ys = y[: nchunks * chunk].reshape(nchunks, chunk)

            def one(carry: Any, xy: Any) -> Any:
                xc, yc = xy
                z = xc.astype(jnp.float32)
                lse = jax.nn.logsumexp(z, axis=-1)
                zy = jnp.take_along_axis(z, yc[:, None], axis=-1)[:, 0]
                row = (1 - eps) * (lse - zy) + eps * (lse - z.mean(axis=-1))
                return carry + row.sum(), None

            total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), (xs, ys))
            z = x[nchunks * chunk:].astype(jnp.float32)
            yt = y[nchunks * chunk:]
            lse = jax.nn.logsumexp(z, axis=-1)
            zy = jnp.take_along_axis(z, yt[:, None], axis=-1)[:, 0]
            total += ((1 - eps) * (lse - zy) + eps * (lse - z.mean(axis=-1))).sum()
            return total / N

        @jax.jit
        def rel_l2(a: Any, b: Any) -> Any:
            a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
            return jnp.sqrt(jnp.sum(jnp.square(a32 - b32)) / jnp.sum(jnp.square(b32)))

        estimate = None
        for eps in args.smoothing:
            seconds = max(0.0, min(step_end, deadline.end) - time.perf_counter()) / max(1, len(cases) - done)
            done += 1

            def ours(x: Any, eps: float = eps) -> Any:
                return sj.softmax_cross_entropy_with_integer_labels(x, y, label_smoothing=eps).mean()

            def theirs(x: Any, eps: float = eps) -> Any:
                if eps == 0.0:
                    return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()
                return optax.softmax_cross_entropy(x, optax.smooth_labels(jax.nn.one_hot(y, V, dtype=x.dtype), eps)).mean()

            fns: list[tuple[str, Any, bool, str | None]] = [(ref_name, theirs, False, optax_note), (ours_name, ours, True, None)]
            impls: list[Impl] = []
            mems: dict[str, float | None] = {}
            for name, fn, is_ours, nt in fns:
                if nt is not None:
                    impls.append(Impl(name, note=nt, ours=is_ours, reference=not is_ours))
                    continue
                try:
                    step = jax.jit(jax.value_and_grad(fn))
                    compiled = step.lower(x).compile()
                    try:
                        ma = compiled.memory_analysis()
                        mems[name] = (ma.temp_size_in_bytes + ma.output_size_in_bytes) / MIB
                    except Exception:  # noqa: BLE001 - the row says what failed
                        mems[name] = None
                    big = None if mems[name] is None else _jax_too_big(mems[name] * MIB, dev, args.device)
                    if big is not None:
                        impls.append(Impl(name, note=big, ours=is_ours, reference=not is_ours))
                        continue

                    def run(a: Any, compiled: Any = compiled) -> tuple[Any, tuple[Any, ...]]:
                        loss, g = compiled(a)
                        g.block_until_ready()
                        return loss, (g,)

                    impls.append(Impl(name, lambda: x, run, None, ours=is_ours, reference=not is_ours))
                except Exception as e:  # noqa: BLE001 - the row says what failed
                    impls.append(Impl(name, note=short_error(e), ours=is_ours, reference=not is_ours))
            if estimate is None:
                first = next((i for i in impls if i.note is None), None)
                if first is None:
                    estimate = 0.0
                else:
                    try:
                        estimate = _probe(lambda: first.run(x), block)
                    except Exception:  # noqa: BLE001 - the row says what failed
                        estimate = 0.0
            log(f"dense jax {size} ε={eps:g}: about {estimate * 1e3:.1f} ms per call, {seconds:.0f} s")
            ref = None
            if plan_calls(estimate, sum(i.note is None for i in impls), seconds, args.warmup, args.repeats) is not None:
                try:
                    ref = float(ref_loss(x, y, jnp.float32(eps)))
                except Exception as e:  # noqa: BLE001 - the row says what failed
                    log(f"jax reference failed: {e}")

            def grad_diff(g: tuple[Any, ...], r: tuple[Any, ...]) -> float | None:
                return float(rel_l2(g[0], r[0]))

            case_rows = bench_case(impls, size, eps, sync=block, memory=_NoMemory(), estimate=estimate,
                                   seconds=seconds, warmup=args.warmup, repeats=args.repeats, ref_loss=ref,
                                   grad_diff=grad_diff)
            for r in case_rows:
                if r.note is None:
                    r.mem_mib = mems.get(r.impl)
            rows += case_rows
        x = y = None
        gc.collect()
    return rows


def _jax_too_big(need: float, dev: Any, device: str) -> str | None:
    """The skip note when a compiled step's buffers do not fit what the JAX device has left."""
    if device == "cuda":
        try:
            stats = dev.memory_stats() or {}
            avail = float(stats["bytes_limit"] - stats["bytes_in_use"])
        except Exception:  # noqa: BLE001 - then torch's view of the device
            return too_big(need, device)
        if need <= 0.8 * avail:
            return None
        return f"skipped: needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"
    return too_big(need, device, fraction=0.5)


class _NoMemory(Memory):
    """JAX: the memory column comes from XLA's memory analysis instead."""

    def __init__(self) -> None:
        super().__init__("none")

    def start(self) -> float | None:
        return None


# --------------------------------------------------------------------------- header and main


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=False).stdout.strip()
            return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown (no git)"


def header_lines(args: argparse.Namespace, argv: Sequence[str]) -> list[str]:
    import torch

    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = f"{torch.cuda.get_device_name(0)} ({props.total_memory / (1 << 30):.0f} GiB, CUDA {torch.version.cuda})"
    else:
        device = f"CPU: {_cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    versions = ", ".join(
        f"{name} {_version(dist)}" for name, dist in (
            ("torch", "torch"), ("jax", "jax"), ("jaxlib", "jaxlib"), ("optax", "optax"), ("numpy", "numpy"),
            ("liger-kernel", "liger-kernel"), ("cut-cross-entropy", "cut-cross-entropy"),
        )
    )
    import smoothloss

    return [
        f"device: {device}",
        (f"versions: Python {platform.python_version()}, smoothloss {smoothloss.__version__} "
         f"(from {Path(smoothloss.__file__).resolve().parent}), {versions}"),
        f"commit: {_git_commit()}",
        f"date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "command: tools/gpu-check " + " ".join(argv),
        f"compile mode: {smoothloss.compile_mode()} (SMOOTHLOSS_COMPILE={os.environ.get('SMOOTHLOSS_COMPILE', 'unset')})",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # JAX runs last, in this process, next to torch (and in the check's subprocess, which
    # inherits this): no preallocation of most of the GPU's memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    t_start = time.perf_counter()
    deadline = Deadline(args.budget)
    try:
        import torch
    except ImportError as e:
        print(f"gpu-check: torch does not import: {e}", file=sys.stderr)
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: --device cuda asked, but torch.cuda.is_available() is False (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda}); nothing was run. Use --device cpu for a CPU run.", file=sys.stderr)
        return 1
    header = header_lines(args, argv)
    # Warnings (smoothloss's "could not compile its kernels ..." above all: the rows after
    # it measure the eager kernels) go into the report as well as to stderr.
    seen_warnings: list[str] = []
    shown = warnings.showwarning

    def record(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = f"{category.__name__}: {' '.join(str(message).split())}"
        if text not in seen_warnings:
            seen_warnings.append(text)
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = record
    check: CheckResult | None
    if args.check_frameworks.strip().lower() == "none":
        check = CheckResult("python -m smoothloss check", None, 0.0, "", note="skipped")
    else:
        timeout = args.check_timeout if args.check_timeout is not None else min(240.0, 0.5 * args.budget)
        check = run_check(args.device, args.check_frameworks, timeout)
        log(f"step 1: {'PASS' if check.passed else 'FAIL'} in {check.seconds:.1f} s")
    steps: list[tuple[str, Callable[[argparse.Namespace, Deadline, float], list[Row]], float]] = []
    if "torch" in args.bench_frameworks:
        steps.append(("Dense loss, PyTorch: bf16 logits N×V, int64 labels, mean, forward+backward", torch_dense, 0.35))
        steps.append(("Linear loss, PyTorch: bf16 hidden N×H, weight V×H, int64 labels, mean, forward+backward",
                      torch_linear, 0.45))
    if "jax" in args.bench_frameworks:
        steps.append(("Dense loss, JAX: bf16 logits N×V, int32 labels, mean, jax.jit(jax.value_and_grad)", jax_dense, 0.20))
    sections: list[tuple[str, list[Row]]] = []
    out = Path(args.out)

    def write(text: str) -> bool:
        try:
            if out.parent != Path(""):
                out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            return True
        except OSError as e:
            log(f"could not write {out}: {e}")
            return False

    for k, (title, fn, weight) in enumerate(steps):
        write(render_markdown(header, check, sections, None))  # what there is so far, if the run is cut off
        left = max(0.0, deadline.left() - 5.0)
        weights_left = sum(w for _, _, w in steps[k:])
        share = left * weight / weights_left
        log(f"{title}: {share:.0f} s of {left:.0f} s left")
        try:
            rows = fn(args, deadline, share)
        except Exception as e:  # noqa: BLE001 - the row says what failed
            rows = [Row(fn.__name__, "—", 0.0, note=short_error(e), ours=True)]
        sections.append((title, rows))
    warnings.showwarning = shown
    passed = overall_pass(check, sections)
    header.append(f"wall time: {time.perf_counter() - t_start:.0f} s (budget {args.budget:.0f} s)")
    header += [f"warning: {w}" for w in seen_warnings] or ["warnings: none"]
    text = render_markdown(header, check, sections, passed)
    print(text)
    if not write(text):
        return 1
    log(f"wrote {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
