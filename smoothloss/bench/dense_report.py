"""The dense harness's report: ratios and targets from the measured numbers (:func:`summarise`),
the compiled kernels' crossover and the first call in a fresh process (torch), the smoothing
schedule (TensorFlow, ``smoothloss.bench.schedule``), the Markdown tables and the plot.

Works on the results of ``smoothloss.bench.dense.run`` (or a hand-made report of the same
shape) and imports no framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smoothloss.bench import checks, schedule
from smoothloss.bench.common import FRAMEWORKS, MIB, fmt_ms, fmt_ratio, ratio, size_name
from smoothloss.bench.dense import (
    CROSSOVER_IMPLS, FIRST_CALL_IMPLS, FLOOR_TARGET_SIZE, FLOOR_TARGETS, IMPLS, MAIN_TARGETS, MEMORY_TARGETS,
    TARGET_SIZES, TINY, TINY_TARGETS, VERDICT_NAMES, VERDICT_SIZE, Impl, _impl, logits_mib,
)


def summarise(frameworks: dict[str, Any]) -> dict[str, Any]:
    """Ratios per framework and size, the compiled kernels' crossover and the first call in a fresh
    process (torch), the smoothing schedule (TensorFlow), and the targets, met or missed."""
    ratios, dispatch, targets = [], [], []
    mem_allowance = 1.0  # MiB: RSS page granularity, thread stacks, O(B) row statistics
    crossover = first_call = sched = None
    check_rows: list[dict[str, Any]] = []

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
        if res.get("first_call"):
            first_call = compile_first_call(res["first_call"])
        if res.get("schedule"):
            sched = schedule.summarise(res["schedule"])
        if res.get("checks"):
            check_rows += checks.summarise(res["checks"])
    return {"ratios": ratios, "dispatch": dispatch, "targets": targets, "crossover": crossover,
            "first_call": first_call, "schedule": sched, "checks": check_rows, "memory_allowance_mib": mem_allowance}


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The run's verdict: a line saying how time and memory were measured, then one line per
    framework (in ``FRAMEWORKS`` order) that was asked for: at ``VERDICT_SIZE`` (or, where it
    was not measured, the first size), smoothloss's median time ÷ the main built-in's and its
    extra memory ÷ the built-in's; or why there is no verdict (not installed, no such device,
    a failure). Needs ``report["summary"]`` (:func:`summarise`)."""
    s = report["settings"]
    device = s.get("device", "cpu")
    if device == "cpu":
        memory = "peak resident set of one step beyond its inputs"
    else:
        memory = ("peak device memory of one step beyond its inputs (torch: the CUDA allocator's peak; "
                  "jax: XLA's memory analysis of the compiled step)")
    where = "in each framework's timing process" if s.get("quick") else "a fresh process per measurement"
    lines = [f"Verdict: time = median of {s['repeats']} interleaved samples; memory = {memory}, "
             f"measured {where}." if s.get("memory", True) else
             f"Verdict: time = median of {s['repeats']} interleaved samples; memory not measured (--no-memory)."]
    ratios = {(r["framework"], tuple(r["size"])): r for r in report["summary"]["ratios"]}
    measured = report["frameworks"]
    asked = [*measured, *s.get("skipped", []), *s.get("no_device", [])]
    for fw in sorted(dict.fromkeys(asked), key=lambda f: FRAMEWORKS.index(f) if f in FRAMEWORKS else len(FRAMEWORKS)):
        lines.append(_verdict_line(fw, measured.get(fw), ratios, s))
    return lines


def _verdict_line(fw: str, res: dict[str, Any] | None, ratios: dict[tuple[str, tuple[int, ...]], dict[str, Any]],
                  s: dict[str, Any]) -> str:
    device = s.get("device", "cpu")
    if fw in s.get("skipped", []):
        return f'{fw}: not installed, skipped; pip install "smoothloss[{fw}]" adds it'
    if fw in s.get("no_device", []) or res is None:
        return f"{fw}: no {device} device here, skipped"
    if "error" in res:
        return f"{fw}: failed, no verdict ({res['error'][:160]})"
    sizes = [tuple(e["size"]) for e in res["sizes"]]
    if not sizes:
        return f"{fw}: nothing measured"
    size = VERDICT_SIZE if VERDICT_SIZE in sizes else sizes[0]
    recs = next(e for e in res["sizes"] if tuple(e["size"]) == size)["results"]
    main_key = next(i.key for i in IMPLS[fw] if i.main)
    name = VERDICT_NAMES.get(fw, main_key)
    head = f"{fw}: at {size_name(size)} float32 on {device}, "
    broken = [k for k in ("smoothloss", main_key) if "error" in recs.get(k, {"error": "not measured"})]
    if broken:
        why = recs.get(broken[0], {}).get("error", "not measured")
        return head + f"no verdict: {broken[0]} failed ({why[:160]})"
    r = ratios[(fw, size)]
    text = head + f"smoothloss is {fmt_ratio(r['vs_main'])} {name}'s time"
    sm, bm = r["memory_extra_mib"], r["memory_main_builtin_mib"]
    if sm is not None and bm is not None:
        mem_ratio = ratio(sm, bm)
        text += f" and {fmt_ratio(mem_ratio)} its memory" if mem_ratio is not None else ""
        text += f" (extra MiB {_fmt_mib(sm)} vs {_fmt_mib(bm)})"
    elif s.get("memory", True):
        text += " (memory: measurement failed, see bench.json)"
    if recs[main_key].get("matches_smoothloss") is False:
        text += "; WARNING: the two losses differ"
    if res.get("compile_failed"):
        text += f"; smoothloss ran its eager kernels, torch.compile failed here ({res['compile_failed'][:120]})"
    return text


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


def compile_first_call(measured: dict[str, Any]) -> dict[str, Any]:
    """From the torch first-call runs: per implementation, its first call (s) and its steady state
    (ms), each also ÷ the built-in's (``F.cross_entropy``, measured in a fresh process of its own)."""
    builtin = next(i.key for i in FIRST_CALL_IMPLS if i.main)
    ref = measured["results"].get(builtin, {})
    rows = []
    for key, rec in measured["results"].items():
        row = {"implementation": key, "first_call_s": rec.get("first_call_s"), "steady_ms": rec.get("steady_ms"),
               "compiled_kernels": rec.get("compiled_kernels"), "error": rec.get("error")}
        row["first_call_vs_builtin"] = ratio(row["first_call_s"], ref.get("first_call_s"))
        row["steady_vs_builtin"] = ratio(row["steady_ms"], ref.get("steady_ms"))
        rows.append(row)
    calls, steady = measured["calls"], measured["steady_calls"]
    return {"size": measured["size"], "builtin": builtin, "steady_calls": [calls - steady + 1, calls], "rows": rows}


def _fmt_mib(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _impl_label(impl: Impl, rec: dict[str, Any]) -> str:
    """The implementation's label; torch's default smoothloss row says when it ran the compiled kernels."""
    return impl.label + (" [compiled]" if impl.key == "smoothloss" and rec.get("compiled_kernels") else "")


SUMMARY_HEADING = "## Summary"
DETAILS_HEADING = "## Every implementation and size"
SUBSECTION_HEADINGS = {  # the sections after the full table, in this order (each only where measured)
    "crossover": "### Compiled against eager kernels (torch)",
    "first_call": "### First call in a fresh process (torch)",
    "schedule": "### Smoothing schedule (TensorFlow)",
    "checks": "### Run-time label check in compiled steps",
    "dispatch": "### Tiny batch",
    "targets": "### Targets",
    "notes": "### Notes",  # where no target was measured: the notes alone
}


def _measured(fw: str, results: dict[str, Any], lines: list[str], lead: str, blanks: int) -> Any:
    """``(impl, record)`` of each of ``fw``'s implementations found in ``results``; one
    that failed adds its row (``lead``, the failure, ``blanks`` empty cells) instead."""
    for impl in IMPLS[fw]:
        rec = results.get(impl.key)
        if rec is None:
            continue
        if "error" in rec:
            lines.append(f"| {lead} | {impl.label} | failed: {rec['error'][:120]} |" + " |" * blanks)
            continue
        yield impl, rec


def markdown(report: dict[str, Any]) -> str:
    """The frameworks' results as Markdown, the summary first: ``## Summary`` (the ratios per
    framework and size), then ``## Every implementation and size`` (:func:`details_markdown`)."""
    summary = summary_markdown(report)
    head = [SUMMARY_HEADING, "", *summary, ""] if summary else []
    return "\n".join(head) + details_markdown(report)


def summary_markdown(report: dict[str, Any]) -> list[str]:
    """The ratio table (smoothloss ÷ the built-ins and ÷ the floor, per framework and size), with
    the sentence that introduces it; [] where nothing was timed."""
    summary = report["summary"]
    lines: list[str] = []
    if summary["ratios"]:
        lines += [
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
    return lines


def details_markdown(report: dict[str, Any]) -> str:
    """``## Every implementation and size``: timings with memory of every implementation and size,
    then a ``###`` section each (:data:`SUBSECTION_HEADINGS`) for the torch compiled-kernels crossover,
    the first call in a fresh process, the smoothing schedule, the run-time check, the tiny batch and
    the targets with the notes."""
    lines: list[str] = [DETAILS_HEADING, ""]
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
            for impl, rec in _measured(fw, entry["results"], lines, f"{fw} | {size_name(size)}", 6):
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
                    f"| {fmt_ms(rec['median_ms'])} | {fmt_ms(rec['min_ms'])}–{fmt_ms(rec['max_ms'])} "
                    f"| {fmt_ms(rec['q1_ms'])}–{fmt_ms(rec['q3_ms'])} | {fmt_ms(rec.get('first_call_ms'))} "
                    f"| {rel} | {fmt_ratio(ratio(rec['median_ms'], floor))} | {memtxt} |"
                )
    summary = report["summary"]
    if summary.get("crossover"):
        lines += ["", SUBSECTION_HEADINGS["crossover"], *_crossover_markdown(summary["crossover"])]
    if summary.get("first_call"):
        lines += ["", SUBSECTION_HEADINGS["first_call"], *_first_call_markdown(summary["first_call"], eps, device)]
    if summary.get("schedule"):
        lines += ["", SUBSECTION_HEADINGS["schedule"], *schedule.markdown_lines(summary["schedule"], device)]
    if summary.get("checks"):
        lines += ["", SUBSECTION_HEADINGS["checks"], *checks.markdown_lines(summary["checks"])]
    if summary["dispatch"]:
        lines += [
            "",
            SUBSECTION_HEADINGS["dispatch"],
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
            for impl, rec in _measured(fw, d["results"], lines, f"{fw} | {d['mode']}", 3):
                rel = "1.00×" if impl.key == "smoothloss" else fmt_ratio(ratio(sl, rec["median_ms"]))
                label = impl.label.replace(" (tf.function)", "").replace(" (jit)", "")
                lines.append(
                    f"| {fw} | {d['mode']} | {label} | {rec['median_ms'] * 1e3:.0f} "
                    f"| {rec['min_ms'] * 1e3:.0f}–{rec['max_ms'] * 1e3:.0f} | {fmt_ms(rec.get('first_call_ms'))} "
                    f"| {rel} |"
                )
    lines += ["", SUBSECTION_HEADINGS["targets" if summary["targets"] else "notes"]]
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
        "Compiling is paid once per process: in the default mode smoothloss's torch kernels are compiled at the "
        "first call after a call signature's eager warm-up calls (so a first call does not compile: see the "
        "first-call table) and reused for every batch size, class count and smoothing value; `jax.jit` and "
        "`tf.function` trace and compile again for each new shape.",
        "Keras CategoricalCrossentropy gets `tf.one_hot(y)` built inside the step, as optax gets `jax.nn.one_hot(y)`: "
        "all implementations start from integer labels.",
        "Keras SparseCategoricalCrossentropy has no label smoothing in Keras 3.15: it computes a different (unsmoothed) "
        "loss and is listed for speed only.",
        "The timm row is timm's LabelSmoothingCrossEntropy formula written out in torch (log_softmax, gather, mean).",
        "The torch.compile(F.cross_entropy) row is `torch.compile(lambda x, y: F.cross_entropy(x, y, "
        "label_smoothing=ε))`, compiled by its first call at each size (Dynamo compiles again for a new shape, "
        "then with dynamic shapes): its first call ms includes compiling, its samples do not.",
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
        lines.append(f"| {size_name(r['size'])} | {r['logits']:,} | {fmt_ms(r['compiled_ms'])} "
                     f"| {fmt_ms(r['eager_ms'])} | {fmt_ratio(r['compiled_over_eager'])} "
                     f"| {fmt_ms(r['compiled_first_call_ms'])} |")
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


def _first_call_markdown(fc: dict[str, Any], eps: float, device: str) -> list[str]:
    labels = {i.key: i.label for i in FIRST_CALL_IMPLS}
    first, last = fc["steady_calls"]
    builtin = fc["builtin"]
    lines = [
        "",
        f"First call in a fresh process (empty Inductor cache): torch on the "
        f"{device.upper() if device == 'cpu' else device}, {size_name(fc['size'])} float32 logits, integer labels, "
        f"label_smoothing={eps}, forward+backward; each implementation in a new Python process whose "
        "`TORCHINDUCTOR_CACHE_DIR` and `TRITON_CACHE_DIR` are new empty directories. First call: its wall time, "
        "after `import torch, smoothloss` and building the inputs (where smoothloss runs its compiled kernels, "
        f"[compiled], it compiles them in this call); steady state: the median of calls {first}–{last} in the same "
        "process:",
        "",
        f"| implementation | first call s | steady-state ms | first call ÷ {builtin} | steady state ÷ {builtin} |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in fc["rows"]:
        label = labels.get(r["implementation"], r["implementation"]) + (" [compiled]" if r["compiled_kernels"] else "")
        if r["error"]:
            lines.append(f"| {label} | failed: {r['error'][:120]} | | | |")
            continue
        lines.append(f"| {label} | {fmt_ms(r['first_call_s'])} | {fmt_ms(r['steady_ms'])} "
                     f"| {fmt_ratio(r['first_call_vs_builtin'])} | {fmt_ratio(r['steady_vs_builtin'])} |")
    return lines


def plot(report: dict[str, Any], path: Path) -> str | None:
    """Time against K, one line per implementation, one panel per framework; None if no matplotlib,
    or where fewer than two class counts K were measured (--quick: one size, nothing to plot)."""
    fws = [fw for fw, res in report["frameworks"].items() if "error" not in res and res["sizes"]]
    if len({e["size"][1] for fw in fws for e in report["frameworks"][fw]["sizes"]}) < 2:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
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
