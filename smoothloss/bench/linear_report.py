"""The chunked linear benchmark's Markdown section (:mod:`smoothloss.bench.linear` measures it)."""

from __future__ import annotations

from typing import Any

from smoothloss.bench.common import fmt_ratio, size_name
from smoothloss.bench.linear import BUILTIN, CCE

__all__ = ["markdown"]


def _fmt_s(v: float | None) -> str:
    """Seconds to 3 significant digits.

    >>> _fmt_s(12.345), _fmt_s(0.0012345), _fmt_s(None)
    ('12.3', '0.00123', '—')
    """
    return "—" if v is None else f"{v:.3g}"


def _fmt_mib(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _against_cells(base: dict[str, Any], chunked: dict[str, Any], e: dict[str, Any], suffix: str) -> str:
    """A table row's cells from time on: ``base`` then the chunked path, and the entry's
    ratios named with ``suffix`` ("": ÷ unchunked, "_builtin": ÷ builtin)."""
    return (
        f"| {_fmt_s(base['time_s'])} | {_fmt_s(chunked['time_s'])} | {fmt_ratio(e['time_ratio' + suffix])} "
        f"| {_fmt_mib(base['peak_mib'])} | {_fmt_mib(chunked['peak_mib'])} | {fmt_ratio(e['peak_ratio' + suffix])} "
        f"| {_fmt_mib(base['extra_mib'])} → {_fmt_mib(chunked['extra_mib'])} "
        f"| {fmt_ratio(e['extra_ratio' + suffix])} |"
    )


def markdown(linear: dict[str, Any]) -> str:
    """The linear results as a Markdown section: a paragraph on the method and one table."""
    s = linear["settings"]
    threads = f"{s['threads']} intra-op thread(s)" if s.get("threads") else "each framework's default threading"
    lines = [
        "## Chunked linear cross-entropy",
        "",
        f"`linear_cross_entropy(hidden, weight, labels, label_smoothing={s['smoothing']}, chunk_size=C)` against "
        f"`cross_entropy(hidden @ weight.T, labels, label_smoothing={s['smoothing']})` (unchunked) and against "
        "each framework's own label-smoothed loss on the same logits (builtin: torch `F.cross_entropy`, optax "
        "`softmax_cross_entropy` of `smooth_labels(one_hot(labels))`, Keras `CategoricalCrossentropy` of "
        "`one_hot(labels)`, masked), every 10th label ignored (-100): forward+backward with "
        "respect to hidden (N×H) and weight (V×H), float32, CPU, "
        f"{threads}. Each run is a fresh process: one full-size warm-up step, then the resident-set high-water "
        "mark is reset and one measured step gives the time and the peak resident set; before = resident set at "
        "the reset (runtime + inputs), extra = peak − before. "
        f"{s['repeats']} run(s) per path, the paths alternated; time = median, peak and extra = largest. "
        "Ratios are chunked ÷ unchunked (< 1: the chunked path is faster / smaller); the last table divides "
        "by the builtin path.",
        "",
        "| framework | N×H×V (logits MiB) | chunk rows | time s unchunked | time s chunked | time ratio "
        "| peak MiB unchunked | peak MiB chunked | peak ratio | extra MiB unchunked → chunked | extra ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    against, against_cce = [], []
    for e in linear["results"]:
        u, c = e["unchunked"], e["chunked"]
        rows = e.get("chunk_rows")
        chunk = f"{rows}" if e.get("chunk") else (f"default ({rows})" if rows else "default")
        head = f"| {e['framework']} | {size_name(e['size'])} ({e['logits_mib']:.0f}) | {chunk} "
        if "error" in u or "error" in c:
            err = u.get("error") or c.get("error")
            lines.append(head + f"| failed: {str(err)[:160]} | | | | | | | |")
            continue
        lines.append(head + _against_cells(u, c, e, ""))
        b = e.get("builtin")
        if b is not None and "error" not in b:
            against.append(
                f"| {e['framework']} | {size_name(e['size'])} | {BUILTIN.get(e['framework'], 'builtin')} "
                + _against_cells(b, c, e, "_builtin")
            )
        k = e.get(CCE)
        if k is not None and "error" not in k:
            against_cce.append(f"| {e['framework']} | {size_name(e['size'])} " + _against_cells(k, c, e, "_cce"))
    if not linear["results"]:
        lines.append("| — | no framework measured | | | | | | | | | |")
    if against:
        lines += [
            "",
            "The chunked path against each framework's own loss on the unchunked logits (ratios chunked ÷ builtin):",
            "",
            "| framework | N×H×V | builtin | time s builtin | time s chunked | time ratio | peak MiB builtin "
            "| peak MiB chunked | peak ratio | extra MiB builtin → chunked | extra ratio |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *against,
        ]
    if against_cce:
        lines += [
            "",
            "The chunked path against Cut Cross-Entropy's `impl=\"torch_compile\"` (its CPU path; it has no "
            "label smoothing, so it runs without; ratios chunked ÷ CCE):",
            "",
            "| framework | N×H×V | time s CCE | time s chunked | time ratio | peak MiB CCE | peak MiB chunked "
            "| peak ratio | extra MiB CCE → chunked | extra ratio |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *against_cce,
        ]
    elif s.get("cce") and s["cce"] != "measured (torch)" and "torch" in s.get("frameworks", ()):
        lines += ["", f"Cut Cross-Entropy was not measured: {s['cce']}."]
    mismatched = [e for e in linear["results"] if e.get("losses_match") is False]
    for e in mismatched:
        lines += ["", f"- **{e['framework']} {size_name(e['size'])}: the two paths' losses differ** "
                      f"({e['unchunked']['loss']} vs {e['chunked']['loss']})."]
    return "\n".join(lines) + "\n"
