"""``python -m smoothloss bench``: the command line, the worker entry point and the report.

Parses the options, runs the dense harness (``smoothloss.bench.dense``, its report in
``smoothloss.bench.dense_report``) and the linear one
(``smoothloss.bench.linear``), each measurement in a subprocess ``python -m smoothloss.bench
--worker SPEC`` (dispatched by :func:`worker_entry`), and writes in ``--out`` ``bench.json``
(every sample, machine and versions), ``bench.md`` (the tables) and ``bench.png`` (time
against K, one panel per framework, where two class counts or more were measured); with
``--docs PATH`` the page of the docs (:func:`docs_page`: the summary and the plot first, then
how it was measured, then every table), with the plot next to it. It prints the tables (not
with ``--quick``), then :func:`closing_text`: one verdict line per framework and the load
warnings.
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

from smoothloss.bench import checks, dense, dense_report, linear, linear_report, schedule
from smoothloss.bench.common import (
    FRAMEWORKS, LOAD_LIMIT_START, PACKAGE_DIR, apply_threads, load_warning, loadavg, log, size_name, threads_text,
    write_json,
)

SCHEMA = 1

# Timing of the full run and of --quick alike (--quick measures less, not worse).
FULL = {"repeats": 10, "warmup": 3, "min_sample_s": 0.02, "tiny_min_sample_s": 0.05}
MEMORY_MODES = {  # settings["memory_mode"]: how the extra memory was measured
    True: "in-process: in each framework's timing process, before its timings, on the steps then timed (--quick)",
    False: "fresh process per framework × implementation × size",
}


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
        parts.append(linear_report.markdown(report["linear"]))
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
    """The docs page of a report (``--docs``): front matter hiding the table of contents (the tables
    need the width), ``# Benchmarks``, then ``## Summary`` (the ratio table, links to the linear
    section and the targets, the plot as a link to the full-size image, class ``.bench-plot`` of
    ``docs/stylesheets/extra.css``), ``## How it was measured`` (command, machine, threads, method),
    ``## Every implementation and size`` with its ``###`` sections
    (:func:`smoothloss.bench.dense_report.details_markdown`) and the linear section."""
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
    dev = s.get("device", "cpu")
    summary = dense_report.summary_markdown(report)
    parts = [
        "---",
        "# The tables need the width: no table of contents on this page (its sections are the headings below).",
        "hide:",
        "  - toc",
        "---",
        "",
        "# Benchmarks",
        "",
        "smoothloss's label-smoothed cross-entropy against each framework's own, forward+backward, measured side "
        "by side in one run. A ratio below 1× means smoothloss is faster, or uses less memory. How the numbers "
        "were taken is under [How it was measured](#how-it-was-measured), below the summary.",
        "",
        dense_report.SUMMARY_HEADING,
        "",
        f"Forward+backward with respect to float32 logits on the {dev.upper() if dev == 'cpu' else dev}, integer "
        f"labels, label_smoothing={s['smoothing']}, mean reduction; medians of interleaved samples. The *main "
        "built-in* is the framework's own label-smoothed loss; the *fastest built-in* is the fastest loss the "
        "framework ships, whether or not it smooths (`torch.compile(F.cross_entropy)`, or Keras's unsmoothed "
        "`SparseCategoricalCrossentropy`); the *floor* is the framework's own softmax of the logits, the least a "
        "loss and its gradient can cost. *default ÷ eager kernels* compares smoothloss's default compile mode on "
        "torch with its eager kernels. *extra MiB* is the peak memory of one step beyond its inputs.",
        "",
    ]
    parts += [f"**Warning:** {w}.\n" for w in report.get("load_warnings", [])]
    if summary:
        parts += [*summary, ""]
    links = []
    if report.get("linear"):
        links.append("The chunked `linear_cross_entropy` against each framework's own loss on the full logits is "
                     "summarised in [Chunked linear cross-entropy](#chunked-linear-cross-entropy)")
    if report["summary"]["targets"]:
        links.append("which of the project's targets this run met is in [Targets](#targets)")
    if links:
        sentence = "; ".join(links)
        parts += [sentence[0].upper() + sentence[1:] + ".", ""]
    if png_name:
        parts += [
            f"[![Forward+backward time against K, one panel per framework (click for the full-size image)]"
            f"({png_name})]({png_name})",
            "{ .bench-plot }",
            "",
            "The plot at full size, one panel per framework (scroll sideways, or click it to open the image "
            "alone): median forward+backward time against the number of classes K, log scale, min–max as error "
            "bars.",
            "",
        ]
    parts += [
        "## How it was measured",
        "",
        "Generated by:",
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
        + ("each framework × implementation × size runs in a fresh process; after a warm-up on a small batch "
           "and one full-size step (compilation), " if not s.get("quick") else
           "(--quick) in each framework's timing process, before its timings, after each implementation's first "
           "full-size steps (compilation), ")
        + "the resident-set high-water "
        "mark is reset and one more step is run; the peak minus the resident set before it is the step's extra "
        "memory (the smaller of two such steps). Memory runs use a fixed glibc mmap threshold "
        "(`MALLOC_MMAP_THRESHOLD_=262144`) so that large blocks are mapped and unmapped with each step, and "
        "TensorFlow with `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`, as its default CPU allocator pools large blocks out "
        "of sight of the resident set; timings use the default allocators. Throughput numbers on a shared "
        "machine are noisy: compare the ratios, which come from one interleaved run, rather than absolute times.",
        "",
        dense_report.details_markdown(report),
    ]
    if report.get("linear"):
        parts.append(linear_report.markdown(report["linear"]))
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smoothloss bench",
        description="Time forward+backward and peak memory of smoothloss against each framework's own "
        "label-smoothed cross-entropy; write JSON, a Markdown table and a PNG plot.",
    )
    p.add_argument("--quick", action="store_true",
                   help=f"a check a user can act on, in under a minute on 2 CPUs with torch, jax and TensorFlow: "
                   f"{size_name(dense.QUICK_SIZES[0])} float32 only, smoothloss against each framework's own loss "
                   "(torch F.cross_entropy, optax softmax_cross_entropy, Keras CategoricalCrossentropy), time "
                   "(interleaved medians) and peak extra memory (measured in the timing process), ending with one "
                   "verdict line per framework; the full tables go to --out only. The extras below (tiny batch, "
                   "first call, schedule, checks, crossover, linear, the other implementations) are off unless "
                   "asked for. The minute includes, on a machine's first run, compiling smoothloss's torch "
                   "kernels into Inductor's cache")
    p.add_argument("--sizes", default=None,
                   help="comma-separated BxK (default: " + ",".join("x".join(map(str, s)) for s in dense.DEFAULT_SIZES)
                   + "; --quick: " + ",".join("x".join(map(str, s)) for s in dense.QUICK_SIZES) + ")")
    p.add_argument("--frameworks", default=None, help=f"comma-separated subset of {','.join(FRAMEWORKS)} "
                   "(default: those installed)")
    p.add_argument("--out", default="bench-out", help="output folder (default: bench-out)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved samples per implementation "
                   f"(default {FULL['repeats']}, also with --quick)")
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing ε (default 0.1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--all-implementations", action="store_true",
                   help="with --quick: every implementation (smoothloss's eager kernels, torch.compile(F.cross_entropy), "
                   "timm's formula, Keras SparseCategoricalCrossentropy, the softmax floor), as the full run does")
    on_off = [
        ("tiny", f"the {size_name(dense.TINY)} dispatch-overhead timing"),
        ("first-call", f"torch's first call at {size_name(dense.FIRST_CALL_SIZE)} in a fresh process with "
         "empty compiler caches (smoothloss and F.cross_entropy)"),
        ("schedule", f"TensorFlow's smoothing schedule: {schedule.SCHEDULE_STEPS} eager steps at "
         f"{size_name(schedule.SCHEDULE_SIZE)}, ε changing every step, of smoothloss (its XLA backward: "
         "traces, resident set, step time) and Keras CategoricalCrossentropy, each in a fresh process"),
        ("checks", "the cost of the run-time label check inside compiled steps (torch.compile, tf.function) "
         f"at {', '.join(size_name(s) for s in checks.CHECK_SIZES)}, each framework in a fresh process "
         "(CPU only)"),
    ]
    for name, what in on_off:
        p.add_argument(f"--no-{name}", action="store_true", help=f"skip {what}")
        p.add_argument(f"--{name}", action="store_true", help="with --quick: measure it too")
    p.add_argument("--docs", default=None, help="also write this Markdown page (e.g. docs/benchmarks.md), "
                   "with the plot next to it (a plot needs two class counts K)")
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
                   help="also run the linear benchmark for these sizes (default: none; --only-linear --quick: "
                   + ",".join("x".join(map(str, size)) for size in linear.QUICK_SIZES) + "); 'none' turns it off")
    g.add_argument("--linear-frameworks", default="torch",
                   help=f"comma-separated subset of {','.join(FRAMEWORKS)} for --linear (default: torch)")
    g.add_argument("--linear-chunk", type=int, default=None,
                   help="chunk_size of the chunked path (default: the library's default, about 16 MiB of logits in torch, 64 MiB elsewhere)")
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
    # Asking jax and TensorFlow for their devices starts their GPU clients in this process, which
    # lives as long as the run: by default jax would take 75% of the GPU's memory and TensorFlow all
    # of it, out of reach of the workers. On demand, here and (inherited) in the workers.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
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
            linear_sizes = list(linear.QUICK_SIZES) if args.quick and args.only_linear else []
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
    extra = {}
    for name in ("tiny", "first_call", "schedule", "checks"):  # on in the full run, off in --quick unless asked
        on, off = getattr(args, name), getattr(args, "no_" + name)
        if on and off:
            parser.error(f"--{name.replace('_', '-')} and --no-{name.replace('_', '-')} contradict each other")
        extra[name] = on or (not off and not args.quick)
    device = args.device.strip().lower()
    if device.partition(":")[0] == "cpu":  # one CPU device per process in every framework
        device = "cpu"
    if not device:
        parser.error("--device must name a device (cpu, cuda, cuda:1, ...)")
    repeats = args.repeats if args.repeats is not None else FULL["repeats"]
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    frameworks = [f for f in wanted if dense.installed(f)]
    skipped = [f for f in wanted if f not in frameworks]
    for f in skipped:
        log(f"{f}: not installed, skipped")
    no_device: list[str] = []
    if device != "cpu" and frameworks:
        asked = frameworks
        device, frameworks, missing = frameworks_on(device, frameworks)
        no_device = [f for f in asked if f not in frameworks]
        if not frameworks:
            print(missing, file=sys.stderr, flush=True)
            return 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    settings = {
        "sizes": [list(s) for s in sizes], "frameworks": frameworks, "skipped": skipped, "no_device": no_device,
        "smoothing": args.smoothing, "repeats": repeats, "warmup": FULL["warmup"],
        "min_sample_s": FULL["min_sample_s"], "tiny_min_sample_s": FULL["tiny_min_sample_s"],
        "quick": args.quick, "memory": not args.no_memory, "tiny": extra["tiny"], "threads": args.threads,
        "implementations": "main" if args.quick and not args.all_implementations else "all",
        "memory_mode": MEMORY_MODES[args.quick],
        "only_linear": args.only_linear, "device": device,
        "crossover_sizes": [list(s) for s in crossover] if "torch" in frameworks else [],
        "first_call_size": list(dense.FIRST_CALL_SIZE) if "torch" in frameworks and extra["first_call"] else None,
        "schedule_size": (list(schedule.SCHEDULE_SIZE) if "tensorflow" in frameworks and extra["schedule"]
                          else None),
        "schedule_steps": schedule.SCHEDULE_STEPS,
        "checks": extra["checks"] and device == "cpu",
        "linear_sizes": [list(s) for s in linear_sizes],
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

    if not args.quick:
        print(report["markdown"])
    print(closing_text(report, out_dir, bool(png)), flush=True)
    return 1 if failed else 0


def closing_text(report: dict[str, Any], out_dir: Path | str, plotted: bool) -> str:
    """What a run prints last: where the full tables are, one verdict line per framework of
    ``smoothloss.bench.dense_report.verdict_lines`` (none for --only-linear), then the load warnings."""
    files = "JSON, Markdown" + (" and plot" if plotted else "")
    lines = [f"{files} in {out_dir}/ ({report['elapsed_s']:.0f} s); the full tables are in {Path(out_dir) / 'bench.md'}"]
    if not report["settings"].get("only_linear"):
        lines += dense_report.verdict_lines(report)
    lines += [f"warning: {w}" for w in report.get("load_warnings", [])]
    return "\n".join(lines)
