"""``python -m smoothloss bench``: the command line, the worker entry point and the report.

Parses the options, runs the dense harness (``smoothloss.bench.dense``, its report in
``smoothloss.bench.dense_report``) and the linear one
(``smoothloss.bench.linear``), each measurement in a subprocess ``python -m smoothloss.bench
--worker SPEC`` (dispatched by :func:`worker_entry`), and writes in ``--out`` ``bench.json``
(every sample, machine and versions), ``bench.md`` (the tables) and ``bench.png`` (time
against K, one panel per framework); with ``--docs PATH`` the same Markdown, with the
machine description and the command that regenerates it, in PATH and the plot next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smoothloss.bench import checks, dense, dense_report, linear, schedule
from smoothloss.bench.common import (
    FRAMEWORKS, LOAD_LIMIT_START, PACKAGE_DIR, apply_threads, load_warning, loadavg, log, size_name, threads_text,
    write_json,
)

SCHEMA = 1


# --------------------------------------------------------------------------- machine


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
    root = PACKAGE_DIR.parent
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

    h = hashlib.sha256()
    for f in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = f.relative_to(PACKAGE_DIR)
        if rel.parts[0] != "bench":
            h.update(str(rel).encode() + b"\0" + f.read_bytes())
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
    info["loadavg_start"] = loadavg()
    return info


# --------------------------------------------------------------------------- worker


def worker_entry(argv: list[str]) -> int:
    """``--worker SPEC``: run one measurement (``SPEC["task"]``) and write its JSON to ``SPEC["out"]``."""
    spec = json.loads(argv[1])
    apply_threads(spec["framework"], spec.get("threads"))
    result = (linear.worker if spec["task"] == "linear" else dense.worker)(spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- report


def markdown_tables(report: dict[str, Any]) -> str:
    """The results as Markdown: the load warnings if any, timings with memory, ratios and targets,
    dispatch; then the chunked linear cross-entropy's table if it was measured (``--linear``)."""
    parts = [f"**Warning:** {w}.\n" for w in report.get("load_warnings", [])]
    parts += [dense_report.markdown(report)] if report["frameworks"] else []
    if report.get("linear"):
        parts.append(linear.markdown(report["linear"]))
    return "\n".join(parts)


def _machine_line(m: dict[str, Any]) -> str:
    v = m["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "jax", "optax", "tensorflow", "keras", "numpy") if v.get(k))
    load = ""
    if m.get("loadavg_start") and m.get("loadavg_end"):
        load = f"; load average (1/5/15 min) {m['loadavg_start']} at start, {m['loadavg_end']} at end"
    return (f"{m['cpu_model']}, {m['cpus_usable']} usable CPUs of {m['cpu_count']}, "
            f"{m['memory_gib']} GiB RAM, {m['platform']}, Python {m['python']}; {_smoothloss_text(m)}{vers}{load}")


def _smoothloss_text(m: dict[str, Any]) -> str:
    """'smoothloss 0.3.0 (git 5e841eebb3af), ': the revision only from a clean tree (the JSON keeps it
    always, with the digest of the sources measured)."""
    version = m["versions"].get("smoothloss")
    rev = m.get("smoothloss_git")
    git = f" (git {rev})" if rev and not rev.endswith("-dirty") else ""
    return f"smoothloss {version}{git}, " if version else (f"smoothloss{git}, " if git else "")


def _threads_line(report: dict[str, Any]) -> str:
    requested = report["settings"].get("threads")
    parts = [threads_text(fw, res.get("info", {}), requested)
             for fw, res in report["frameworks"].items() if "error" not in res]
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
        "last a few milliseconds. Besides smoothloss and the framework's own losses, each framework has a "
        "floor row: its own softmax of the logits (torch `torch.softmax(x, -1)` without autograd, "
        "`jax.jit(jax.nn.softmax)`, `tf.function(tf.nn.softmax)`), which reads the logits twice and writes a "
        "result as large once, the least a loss and its gradient can cost; \"÷ floor\" divides by it. On torch, "
        "`smoothloss.cross_entropy` is measured in the default compile mode, which runs kernels compiled by "
        "`torch.compile` from a threshold of logits up, and with `set_compile_mode(\"never\")` (eager kernels); "
        "the ratios and targets use the default. The first call of each implementation at each size is "
        "reported: it includes tracing and compiling where they happen. In the default mode smoothloss's torch "
        "kernels are compiled once per process per dtype and option set, at the first call after a call "
        "signature's eager warm-up calls (warmed up past them here; every batch size reuses the compiled "
        "kernels), while `jax.jit` and `tf.function` compile again for each new shape. A ladder of sizes, compiled against eager kernels, shows from which size "
        "compiling pays; the first call of smoothloss and of `F.cross_entropy`, each in a fresh process with "
        "empty Inductor and Triton caches, shows what that compiling costs a new process. `F.cross_entropy` is "
        "also measured under `torch.compile`, warmed up like the others, its compiling in its first call. "
        "On TensorFlow, a smoothing schedule (ε changing at every step of an eager loop, each implementation in "
        "a fresh process) shows how often smoothloss's XLA-compiled backward is traced, and the resident set and "
        "step time of each step, beside Keras's loss constructed anew at every step. "
        "Threads: the threading each framework used is printed at its start and given above; "
        "the 1-minute load average is read before the first measurement and after the last, and a warning "
        "is printed and written into this page when it shows another process competing for the CPUs. Memory: "
        "each framework × implementation × size runs in a fresh process; "
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
    p.add_argument("--quick", action="store_true", help="CI mode: tiny sizes, few repeats (torch's first call in a fresh "
                   f"process is still measured, at {size_name(dense.FIRST_CALL_SIZE)}, and TensorFlow's smoothing "
                   f"schedule, at {size_name(schedule.SCHEDULE_SIZE)})")
    p.add_argument("--repeats", type=int, default=None, help="interleaved samples per implementation "
                   "(default 10; --quick 3)")
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing ε (default 0.1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--no-tiny", action="store_true",
                   help=f"skip the {size_name(dense.TINY)} dispatch-overhead timing")
    p.add_argument("--no-first-call", action="store_true",
                   help=f"skip torch's first call at {size_name(dense.FIRST_CALL_SIZE)} in a fresh process with "
                   "empty compiler caches (smoothloss and F.cross_entropy)")
    p.add_argument("--no-schedule", action="store_true",
                   help=f"skip TensorFlow's smoothing schedule: {schedule.SCHEDULE_STEPS} eager steps at "
                   f"{size_name(schedule.SCHEDULE_SIZE)}, ε changing every step, of smoothloss (its XLA backward: "
                   "traces, resident set, step time) and Keras CategoricalCrossentropy, each in a fresh process")
    p.add_argument("--no-checks", action="store_true",
                   help="skip the cost of the run-time label check inside compiled steps (torch.compile, tf.function) "
                   f"at {', '.join(size_name(s) for s in checks.CHECK_SIZES)}, each framework in a fresh process")
    p.add_argument("--docs", default=None, help="also write this Markdown page (e.g. docs/benchmarks.md), "
                   "with the plot next to it")
    p.add_argument("--note", default=None, help="a sentence to put in the docs page (e.g. about machine load)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for torch and TensorFlow (jax: only 1 is honoured, through XLA_FLAGS); "
                   "default: each framework's own choice")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to each subprocess")
    p.add_argument("--device", default="cpu",
                   help="where the frameworks' losses run: cpu (default), cuda, cuda:1, ...; a device that no "
                   "framework has here is refused (the linear benchmark runs on the CPU)")
    g = p.add_argument_group(
        "compiled vs eager kernels (torch)",
        "smoothloss with set_compile_mode('always') against 'never' at a ladder of sizes, and the smallest size "
        "from which the compiled kernels win; part of the full run, off in --quick mode",
    )
    g.add_argument("--crossover", action="store_true", help="run it in --quick mode too")
    g.add_argument("--no-crossover", action="store_true", help="skip it")
    g.add_argument("--crossover-sizes", default=None, metavar="BxK[,BxK...]",
                   help="its sizes (default: " + ",".join("x".join(map(str, s)) for s in dense.CROSSOVER_SIZES)
                   + "); giving them runs it")
    g = p.add_argument_group(
        "chunked linear cross-entropy",
        "linear_cross_entropy(hidden, weight, labels) against cross_entropy(hidden @ weight.T, labels), "
        "forward+backward, peak memory and time, each run a fresh process (see smoothloss.bench.linear)",
    )
    g.add_argument("--linear", default=None, metavar="NxHxV[,NxHxV...]",
                   help="also run the linear benchmark for these sizes (default: none; --quick: "
                   + ",".join("x".join(map(str, size)) for size in linear.QUICK_SIZES) + "); 'none' turns it off")
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


def frameworks_on(device: str, frameworks: list[str]) -> tuple[str, list[str], str]:
    """``device`` spelled as ``python -m smoothloss check`` spells it ('GPU:1' -> 'cuda:1'), the
    frameworks of ``frameworks`` that have it here (each is imported and asked through its
    conformance driver, as ``check`` asks), and the line naming what each has, for a refusal."""
    from smoothloss.testing.drivers import DRIVERS, get_driver

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    kind, _, index = device.partition(":")
    device = ("cuda" if kind == "gpu" else kind) + (f":{index}" if index else "")
    have, found = [], {}
    for f in frameworks:
        found[f] = DRIVERS[f]("cpu").devices()
        try:
            get_driver(f, device).require_device()
        except RuntimeError:
            log(f"{f}: no {device} device (has {', '.join(found[f])}), skipped")
        else:
            have.append(f)
    line = f"no {device} device: " + "; ".join(f"{f} has {', '.join(found[f])}" for f in frameworks)
    return device, have, line


def warn(report: dict[str, Any], warning: str | None) -> None:
    """A load warning: on stderr now, and in the Markdown (``report["load_warnings"]``)."""
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
        report["load_warnings"].append(warning)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 if any framework or implementation failed, 2 on bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker_entry(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sizes = (dense.parse_sizes(args.sizes) if args.sizes
                 else list(dense.QUICK_SIZES if args.quick else dense.DEFAULT_SIZES))
    except ValueError as exc:
        parser.error(str(exc))
    if args.frameworks:
        wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
        unknown = [f for f in wanted if f not in FRAMEWORKS]
        if unknown:
            parser.error(f"unknown framework(s) {unknown}; choose from {list(FRAMEWORKS)}")
    else:
        wanted = list(FRAMEWORKS)
    try:
        if args.linear is not None:
            linear_sizes = linear.parse_linear_sizes(args.linear)
        else:
            linear_sizes = list(linear.QUICK_SIZES) if args.quick else []
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
    if args.crossover_sizes is not None and args.no_crossover:
        parser.error("--crossover-sizes and --no-crossover contradict each other")
    try:
        crossover = dense.parse_sizes(args.crossover_sizes) if args.crossover_sizes else list(dense.CROSSOVER_SIZES)
    except ValueError as exc:
        parser.error(f"--crossover-sizes: {exc}")
    if args.no_crossover or (args.quick and not args.crossover and args.crossover_sizes is None):
        crossover = []
    device = args.device.strip().lower()
    if device.partition(":")[0] == "cpu":  # one CPU device per process in every framework
        device = "cpu"
    if not device:
        parser.error("--device must name a device (cpu, cuda, cuda:1, ...)")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    frameworks = [f for f in wanted if dense.installed(f)]
    skipped = [f for f in wanted if f not in frameworks]
    for f in skipped:
        log(f"{f}: not installed, skipped")
    if device != "cpu" and frameworks:
        device, frameworks, missing = frameworks_on(device, frameworks)
        if not frameworks:
            print(missing, file=sys.stderr, flush=True)
            return 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    settings = {
        "sizes": [list(s) for s in sizes], "frameworks": frameworks, "skipped": skipped,
        "smoothing": args.smoothing, "repeats": repeats, "warmup": 2 if args.quick else 3,
        "min_sample_s": 0.002 if args.quick else 0.02, "tiny_min_sample_s": 0.005 if args.quick else 0.05,
        "quick": args.quick, "memory": not args.no_memory, "tiny": not args.no_tiny, "threads": args.threads,
        "memory_mode": "in-process (quick)" if args.quick else "fresh subprocess per framework×implementation×size",
        "only_linear": args.only_linear, "device": device,
        "crossover_sizes": [list(s) for s in crossover] if "torch" in frameworks else [],
        "first_call_size": list(dense.FIRST_CALL_SIZE) if "torch" in frameworks and not args.no_first_call else None,
        "schedule_size": (list(schedule.SCHEDULE_SIZE) if "tensorflow" in frameworks and not args.no_schedule
                          else None),
        "schedule_steps": schedule.SCHEDULE_STEPS,
        "checks": not args.no_checks and device == "cpu",
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
    threads_used = args.threads or report["machine"]["cpus_usable"]
    report["load_warnings"] = []
    start_load = report["machine"]["loadavg_start"]
    warn(report, load_warning("the start", start_load[0] if start_load else None, LOAD_LIMIT_START))
    log(f"device {device}; threads: {'--threads ' + str(args.threads) if args.threads else 'each framework default'}"
        f" on {report['machine']['cpus_usable']} usable CPUs; load average (1/5/15 min) {start_load}")
    t_start = time.perf_counter()
    report["frameworks"] = dense.run(settings, args.timeout)

    failed = dense.failed(report["frameworks"])
    if linear_sizes:
        report["linear"] = linear.run(
            linear_fws, linear_sizes, args.linear_chunk, linear_repeats, eps=args.smoothing,
            threads=args.threads, timeout_s=args.timeout,
        )
        failed |= linear.failed(report["linear"])

    end_load = report["machine"]["loadavg_end"] = loadavg()
    warn(report, load_warning("the end", end_load[0] if end_load else None, threads_used + 0.5, threads_used))
    report["elapsed_s"] = time.perf_counter() - t_start
    report["summary"] = dense_report.summarise(report["frameworks"])
    report["markdown"] = markdown_tables(report)

    png = dense_report.plot(report, out_dir / "bench.png")
    report["plot"] = png
    if png is None and frameworks and importlib.util.find_spec("matplotlib") is None:
        log("matplotlib is not installed: no plot (pip install 'smoothloss[bench]')")
    write_json(out_dir / "bench.json", report)
    (out_dir / "bench.md").write_text(
        f"# smoothloss bench\n\n`{report['command']}`\n\n**Machine:** {_machine_line(report['machine'])}.\n\n"
        f"**Threads:** {_threads_line(report)}.\n\n"
        + ("![plot](bench.png)\n\n" if png else "") + report["markdown"]
    )
    if args.docs:
        doc = Path(args.docs)
        doc.parent.mkdir(parents=True, exist_ok=True)
        png_name = None
        if png:
            png_name = doc.with_suffix(".png").name
            shutil.copyfile(png, doc.with_suffix(".png"))
        doc.write_text(docs_page(report, png_name, report["command"]))
        log(f"wrote {doc}" + (f" and {doc.with_suffix('.png')}" if png_name else ""))

    print(report["markdown"])
    print(f"JSON, Markdown and plot in {out_dir}/ ({report['elapsed_s']:.0f} s)")
    return 1 if failed else 0
