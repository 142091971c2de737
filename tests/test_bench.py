"""`python -m smoothloss bench`: one ``--quick`` run on the installed frameworks, checked
for structure (JSON, Markdown rows, plot), never for speed: performance claims belong in
the benchmark's output, not in unit tests."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smoothloss import bench
from smoothloss.bench import cli, common, dense, dense_report, dense_steps, filtering, linear, linear_report, schedule
from smoothloss.bench.common import FRAMEWORKS, size_name

# pytest -n auto (README): the quick benchmark runs once, in one worker
pytestmark = pytest.mark.xdist_group("bench")

INSTALLED = [f for f in FRAMEWORKS if dense.installed(f)]
CROSSOVER = "16x10,64x100"  # the quick run's compiled-vs-eager ladder: tiny, the graphs are compiled already
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
SIZES = ((64, 10), (256, 1000))  # the test run's sizes: small, and two K for the plot
LINEAR_SIZES = ",".join("x".join(map(str, s)) for s in linear.QUICK_SIZES)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick benchmark of every installed framework at small sizes, with every implementation
    and every extra but the run-time checks asked for (the slow part, run once)."""
    if not INSTALLED:
        pytest.skip("none of torch, jax+optax, tensorflow+keras is installed")
    out = tmp_path_factory.mktemp("bench")
    docs = out / "docs" / "benchmarks.md"
    rc = bench.main(["--quick", "--out", str(out), "--frameworks", ",".join(INSTALLED),
                     "--sizes", ",".join("x".join(map(str, s)) for s in SIZES), "--all-implementations",
                     "--tiny", "--first-call", "--schedule", "--linear", LINEAR_SIZES,
                     "--docs", str(docs), "--note", "test run", "--crossover-sizes", CROSSOVER])
    report = json.loads((out / "bench.json").read_text())
    return rc, out, docs, report


def test_quick_run_succeeds_and_records_the_machine(quick_run):
    rc, out, _, report = quick_run
    assert rc == 0, json.dumps(report, indent=1)[:4000]
    assert report["schema"] == cli.SCHEMA
    machine = report["machine"]
    for key in ("cpu_count", "platform", "python", "versions", "cpu_model"):
        assert key in machine
    assert machine["cpu_count"] >= 1
    for fw in INSTALLED:
        assert machine["versions"][fw] is not None
    assert report["settings"]["quick"] is True
    assert report["settings"]["sizes"] == [list(s) for s in SIZES]
    assert report["command"].startswith("python -m smoothloss bench --quick")
    assert report["settings"]["implementations"] == "all" and report["settings"]["checks"] is False
    assert set(report["frameworks"]) == set(INSTALLED)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_every_implementation_has_positive_timings(quick_run, fw):
    if fw not in INSTALLED:
        pytest.skip(f"{fw} is not installed")
    _, _, _, report = quick_run
    res = report["frameworks"][fw]
    assert "error" not in res, res.get("error")
    repeats = report["settings"]["repeats"]
    assert [e["size"] for e in res["sizes"]] == [list(s) for s in SIZES]
    for entry in res["sizes"] + [res["dispatch"]]:
        assert set(entry["results"]) == {i.key for i in dense.IMPLS[fw]}
        for key, rec in entry["results"].items():
            assert "error" not in rec, (key, rec["error"])
            assert rec["median_ms"] > 0
            assert 0 < rec["min_ms"] <= rec["q1_ms"] <= rec["median_ms"] <= rec["q3_ms"] <= rec["max_ms"]
            assert len(rec["samples_ms"]) == repeats
            assert rec["inner"] >= 1
            if dense._impl(fw, key).smoothing:  # the same loss as smoothloss: like is compared with like
                assert rec["matches_smoothloss"], (key, rec["loss"], entry["results"]["smoothloss"]["loss"])
    assert res["dispatch"]["size"] == list(dense.TINY)
    for m in res["memory"]:  # quick mode: measured in-process, if the platform can reset the peak
        assert m["logits_mib"] > 0
        assert m.get("extra_mib") is None or m["extra_mib"] >= 0


def test_summary_has_ratios_for_every_framework_and_size(quick_run):
    _, _, _, report = quick_run
    rows = {(r["framework"], tuple(r["size"])) for r in report["summary"]["ratios"]}
    assert rows == {(fw, s) for fw in INSTALLED for s in SIZES}
    for r in report["summary"]["ratios"]:
        assert r["vs_fastest"] > 0 and r["vs_main"] > 0
        assert r["fastest_builtin"] in {i.key for i in dense.IMPLS[r["framework"]] if i.builtin}
    assert {d["framework"] for d in report["summary"]["dispatch"]} == set(INSTALLED)


def test_markdown_has_a_row_per_implementation(quick_run):
    _, out, _, report = quick_run
    md = (out / "bench.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for fw in INSTALLED:
        for impl in dense.IMPLS[fw]:
            for size in SIZES:
                prefix = f"| {fw} | {size_name(size)} ("
                assert any(r.startswith(prefix) and (f"| {impl.label} |" in r or f"| {impl.label} [compiled] |" in r)
                           for r in rows), (fw, size, impl.label)
    assert "NO smoothing" in md or "tensorflow" not in INSTALLED


def test_docs_page_names_the_machine_and_the_command(quick_run):
    _, _, docs, report = quick_run
    text = docs.read_text()
    assert report["command"] in text
    assert report["machine"]["cpu_model"] in text
    assert "test run" in text
    assert dense_report.details_markdown(report) in text and "\n".join(dense_report.summary_markdown(report)) in text


def test_plot_is_written(quick_run):
    if not HAS_MATPLOTLIB:
        pytest.skip("matplotlib is not installed (pip install 'smoothloss[bench]'): no plot to check")
    _, out, docs, report = quick_run
    png = out / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert docs.with_suffix(".png").read_bytes() == png.read_bytes()
    assert "](benchmarks.png)" in docs.read_text()
    assert report["plot"] == str(png)


def test_parse_sizes():
    assert dense.parse_sizes("4096x10,1024X32000, 8×5,2*3") == [(4096, 10), (1024, 32000), (8, 5), (2, 3)]
    for bad in ("", "4096", "ax10", "0x10", "4x1", "4x-3"):
        with pytest.raises(ValueError):
            dense.parse_sizes(bad)


@pytest.mark.parametrize(
    "argv", [["--sizes", "12"], ["--frameworks", "mxnet"], ["--repeats", "0"], ["--smoothing", "1.5"],
             ["--threads", "0"]],
)
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2


def _rec(med, first=None):
    return {"median_ms": med, "min_ms": med, "max_ms": med, "q1_ms": med, "q3_ms": med,
            "samples_ms": [med], "inner": 1, "first_call_ms": 5 * med if first is None else first}


def _fake_report() -> dict:
    """A hand-made report: targets computed from known medians, no framework needed."""
    rec = _rec
    sizes = [{"size": [1024, 32000], "results": {"smoothloss": rec(100.0), "smoothloss.eager": rec(200.0),
                                                 "F.cross_entropy": rec(300.0), "timm": rec(150.0),
                                                 "floor": rec(80.0)}},
             {"size": [4096, 1000], "results": {"smoothloss": rec(30.0), "smoothloss.eager": rec(30.0),
                                                "F.cross_entropy": rec(40.0), "timm": rec(20.0),
                                                "floor": rec(10.0)}}]
    sizes[0]["results"]["smoothloss"]["compiled_kernels"] = True
    memory = [{"implementation": "smoothloss", "size": [1024, 32000], "extra_mib": 125.0, "extra_over_logits": 1.0,
               "logits_mib": 125.0},
              {"implementation": "F.cross_entropy", "size": [1024, 32000], "extra_mib": 375.0,
               "extra_over_logits": 3.0, "logits_mib": 125.0}]
    dispatch = {"size": [32, 10], "mode": "torch eager",
                "results": {"smoothloss": rec(0.2), "F.cross_entropy": rec(0.1), "timm": rec(0.1)}}
    jax_sizes = [{"size": [1024, 32000], "results": {"smoothloss": rec(90.0), "optax": rec(200.0),
                                                     "floor": rec(50.0)}}]
    jax_memory = [{"implementation": "smoothloss", "size": [1024, 32000], "extra_mib": 130.0,
                   "extra_over_logits": 1.04, "logits_mib": 125.0}]
    tf_sizes = [{"size": [4096, 1000], "results": {"smoothloss": rec(10.0), "keras.CCE": rec(25.0),
                                                   "keras.SCCE": rec(12.0), "floor": rec(4.0)}}]
    tf_memory = [{"implementation": "smoothloss", "size": [4096, 1000], "extra_mib": 19.0,
                  "extra_over_logits": 1.22, "logits_mib": 15.625}]
    tf_dispatch = {"size": [32, 10], "mode": "TensorFlow eager (no tf.function)",
                   "results": {"smoothloss": rec(1.1), "keras.CCE": rec(1.0), "keras.SCCE": rec(0.5)}}
    crossover = {"threshold": 1 << 17, "compile_failed": None, "sizes": [
        {"size": list(size), "logits": size[0] * size[1],
         "results": {"smoothloss.compiled": rec(c), "smoothloss.eager": rec(e)}}
        for size, c, e in (((64, 100), 2.0, 1.0), ((256, 100), 0.9, 1.0), ((1024, 100), 1.1, 1.0),
                           ((256, 1000), 0.8, 1.0), ((1024, 1000), 0.5, 1.0))]}
    frameworks = {"torch": {"sizes": sizes, "memory": memory, "dispatch": dispatch, "crossover": crossover},
                  "jax": {"sizes": jax_sizes, "memory": jax_memory, "dispatch": None},
                  "tensorflow": {"sizes": tf_sizes, "memory": tf_memory, "dispatch": tf_dispatch}}
    return {"frameworks": frameworks, "settings": {"smoothing": 0.1}}


def test_summary_targets_from_known_numbers():
    report = _fake_report()
    summary = dense_report.summarise(report["frameworks"])
    got = {(t["target"], t["where"]): (round(t["value"], 3), t["met"]) for t in summary["targets"]}
    assert got == {
        ("smoothloss ≤ 1.0× the fastest built-in", "torch 1024×32000 (vs timm)"): (0.667, True),
        ("smoothloss ≤ 0.35× F.cross_entropy", "torch 1024×32000"): (0.333, True),
        ("smoothloss ≤ 1.5× the floor (softmax)", "torch 1024×32000"): (1.25, True),
        ("extra memory ≤ 1× logits + O(B)", "torch 1024×32000"): (125.0, True),
        ("smoothloss ≤ 1.0× the fastest built-in", "torch 4096×1000 (vs timm)"): (1.5, False),
        ("smoothloss ≤ 0.35× F.cross_entropy", "torch 4096×1000"): (0.75, False),
        ("tiny batch 32×10 eager ≤ 1.2× the built-in", "torch eager (vs F.cross_entropy)"): (2.0, False),
        ("smoothloss ≤ 1.0× the fastest built-in", "jax 1024×32000 (vs optax)"): (0.45, True),
        ("smoothloss ≤ 0.5× optax", "jax 1024×32000"): (0.45, True),
        ("smoothloss ≤ 2× the floor (softmax)", "jax 1024×32000"): (1.8, True),
        ("extra memory ≤ 1× logits + O(B)", "jax 1024×32000"): (130.0, False),
        ("smoothloss ≤ 1.0× the fastest built-in", "tensorflow 4096×1000 (vs keras.SCCE)"): (0.833, True),
        ("smoothloss ≤ 0.5× keras.CCE", "tensorflow 4096×1000"): (0.4, True),
        ("extra memory ≤ 1.25× logits + O(B)", "tensorflow 4096×1000"): (19.0, True),
        ("tiny batch 32×10 eager ≤ 1.2× the built-in", "TensorFlow eager (no tf.function) (vs keras.CCE)"): (1.1, True),
    }
    limits = {(t["target"], t["where"]): t["limit"] for t in summary["targets"]}
    assert limits[("extra memory ≤ 1.25× logits + O(B)", "tensorflow 4096×1000")] == pytest.approx(
        1.25 * 15.625 + 1.0 + 64 * 4096 / common.MIB)
    row = next(r for r in summary["ratios"] if r["framework"] == "torch" and r["size"] == [1024, 32000])
    assert row["vs_floor"] == 1.25 and row["over_floor"]["F.cross_entropy"] == 3.75 and row["floor_ms"] == 80.0
    assert row["vs_eager_kernels"] == 0.5 and row["fastest_builtin"] == "timm"  # neither floor nor smoothloss
    report["summary"] = summary
    md = cli.markdown_tables(report)
    assert "| torch | 1024×32000 (125.00) | torch F.cross_entropy(label_smoothing) | 300 | 300–300 | 300–300 | 1500 " \
           "| 0.33× | 3.75× |" in md
    assert "| torch | 1024×32000 (125.00) | smoothloss.cross_entropy [compiled] | 100 |" in md
    assert "| torch | 1024×32000 | 0.67× (timm) | 0.33× (F.cross_entropy) | 1.25× | 0.50× |" in md
    assert "| 0.35× | yes |" in md and "**no**" in md and "\nTargets (ratios from this one run):" in md


def test_compile_crossover_from_known_numbers():
    """The smallest size from which the compiled kernels win at it and at every larger size."""
    report = _fake_report()
    c = dense_report.summarise(report["frameworks"])["crossover"]
    assert [r["compiled_over_eager"] for r in c["sizes"]] == [2.0, 0.9, 1.1, 0.8, 0.5]
    assert c["crossover_size"] == [256, 1000] and c["crossover_logits"] == 256000 and c["threshold"] == 1 << 17
    report["summary"] = dense_report.summarise(report["frameworks"])
    md = cli.markdown_tables(report)
    assert "| 256×1000 | 256,000 | 0.800 | 1.00 | 0.80× | 4.00 |" in md
    assert "Measured crossover: the compiled kernels win from 256×1000 (256,000 logits) up; the default mode " \
           "compiles from 131,072 logits" in md
    for meds, expect in (([0.5, 0.6], [64, 100]), ([1.5, 1.2], None)):
        measured = {"threshold": 10, "sizes": [
            {"size": [64, 100], "logits": 6400, "results": {"smoothloss.compiled": _rec(meds[0]),
                                                            "smoothloss.eager": _rec(1.0)}},
            {"size": [256, 100], "logits": 25600, "results": {"smoothloss.compiled": _rec(meds[1]),
                                                              "smoothloss.eager": _rec(1.0)}}]}
        assert dense_report.compile_crossover(measured)["crossover_size"] == expect


def test_floor_rows_with_ratios(quick_run):
    _, out, _, report = quick_run
    md = (out / "bench.md").read_text()
    assert "| ÷ floor |" in md and "| smoothloss ÷ floor |" in md
    for fw in INSTALLED:
        floor = next(i for i in dense.IMPLS[fw] if i.floor)
        assert floor.label.startswith("floor: ") and not floor.builtin
        for entry in report["frameworks"][fw]["sizes"]:
            assert entry["results"]["floor"]["median_ms"] > 0
            assert any(line.startswith(f"| {fw} | {size_name(entry['size'])} (") and f"| {floor.label} |" in line
                       and "| 1.00× |" in line for line in md.splitlines())
    for r in report["summary"]["ratios"]:
        assert r["vs_floor"] > 0 and r["floor_ms"] > 0 and r["over_floor"]["floor"] == 1.0
        assert r["fastest_builtin"] not in ("floor", "smoothloss.eager")


def test_torch_default_and_eager_kernel_rows(quick_run):
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    _, out, _, report = quick_run
    res = report["frameworks"]["torch"]
    for entry in res["sizes"]:
        default, eager = entry["results"]["smoothloss"], entry["results"]["smoothloss.eager"]
        assert eager["compiled_kernels"] is False and eager["matches_smoothloss"]
        b, k = entry["size"]
        assert default["compiled_kernels"] is (b * k >= res["compile_threshold"]
                                               and res["crossover"]["compile_failed"] is None)
    md = (out / "bench.md").read_text()
    assert "| smoothloss.cross_entropy, eager kernels |" in md
    assert "| torch | 64×10 (0.00) | smoothloss.cross_entropy |" in md  # below the threshold: eager kernels


def test_first_call_is_reported(quick_run):
    _, out, docs, report = quick_run
    for fw in INSTALLED:
        res = report["frameworks"][fw]
        for entry in res["sizes"] + [res["dispatch"]]:
            assert all(r["first_call_ms"] > 0 for r in entry["results"].values())
    for text in ((out / "bench.md").read_text(), docs.read_text()):
        assert "| first call ms |" in text
        assert "once per process" in text and "every batch size" in text


def test_quick_run_measures_the_crossover_only_when_asked(quick_run):
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    _, out, _, report = quick_run
    c = report["summary"]["crossover"]
    assert [tuple(r["size"]) for r in c["sizes"]] == dense.parse_sizes(CROSSOVER)
    assert all(r["compiled_over_eager"] > 0 for r in c["sizes"])
    assert "crossover_size" in c and c["threshold"] >= 1
    md = (out / "bench.md").read_text()
    assert "Compiled vs eager kernels by size" in md and "Measured crossover:" in md


def _settings(argv, tmp_path, monkeypatch):
    """``bench.main(argv)`` with the harness replaced: the settings it was given, and the report."""
    seen = {}

    def fake_run(settings, timeout_s):
        seen.update(settings)
        return {}

    monkeypatch.setattr(dense, "run", fake_run)
    rc = bench.main([*argv, "--linear", "none", "--out", str(tmp_path)])
    return rc, seen, json.loads((tmp_path / "bench.json").read_text())


@pytest.mark.parametrize("argv, ladder", [
    (["--quick"], []),
    (["--quick", "--crossover"], [list(s) for s in dense.CROSSOVER_SIZES]),
    ([], [list(s) for s in dense.CROSSOVER_SIZES]),
    (["--no-crossover"], []),
    (["--quick", "--crossover-sizes", "8x10,32x100"], [[8, 10], [32, 100]]),
])
def test_crossover_options(argv, ladder, tmp_path, monkeypatch):
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    rc, settings, _ = _settings([*argv, "--frameworks", "torch"], tmp_path, monkeypatch)
    assert rc == 0 and settings["crossover_sizes"] == ladder and settings["device"] == "cpu"


# --------------------------------------------------------------------------- torch.compile(F.cross_entropy), first call

COMPILED_BUILTIN = "torch_compiled_builtin"


def test_compiled_builtin_is_timed_beside_f_cross_entropy(quick_run):
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    _, out, _, report = quick_run
    impl = dense._impl("torch", COMPILED_BUILTIN)
    assert impl.builtin and impl.smoothing and not impl.main and impl.label == "torch.compile(F.cross_entropy)"
    keys = [i.key for i in dense.IMPLS["torch"]]
    assert keys.index(COMPILED_BUILTIN) == keys.index("F.cross_entropy") + 1
    res = report["frameworks"]["torch"]
    first = res["sizes"][0]["results"][COMPILED_BUILTIN]
    assert first["first_call_ms"] > first["max_ms"]  # compiling is in the first call, in no sample
    for entry in res["sizes"] + [res["dispatch"]]:
        rec = entry["results"][COMPILED_BUILTIN]
        assert rec["matches_smoothloss"] and len(rec["samples_ms"]) == report["settings"]["repeats"]
    md = (out / "bench.md").read_text().splitlines()
    for row in (r for r in report["summary"]["ratios"] if r["framework"] == "torch"):
        recs = next(e for e in res["sizes"] if e["size"] == row["size"])["results"]
        assert row["vs"][COMPILED_BUILTIN] == recs["smoothloss"]["median_ms"] / recs[COMPILED_BUILTIN]["median_ms"]
        line = next(line for line in md if line.startswith(f"| torch | {size_name(row['size'])} (")
                    and f"| {impl.label} |" in line)
        assert f"| {common.fmt_ratio(row['vs'][COMPILED_BUILTIN])} |" in line
    d = next(d for d in report["summary"]["dispatch"] if d["framework"] == "torch")
    assert d["vs"][COMPILED_BUILTIN] > 0
    measured = {(m["implementation"], tuple(m["size"])) for m in res["memory"]}  # quick: in-process
    assert {(COMPILED_BUILTIN, s) for s in SIZES} <= measured


def test_first_call_in_fresh_processes(quick_run):
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    _, out, docs, report = quick_run
    assert report["settings"]["first_call_size"] == list(dense.FIRST_CALL_SIZE)
    res = report["frameworks"]["torch"]
    fc = res["first_call"]
    assert fc["size"] == list(dense.FIRST_CALL_SIZE) and fc["calls"] == dense.FIRST_CALL_CALLS
    recs = fc["results"]
    assert list(recs) == ["smoothloss", "F.cross_entropy"]
    for rec in recs.values():
        assert "error" not in rec, rec["error"]
        assert len(rec["calls_ms"]) == dense.FIRST_CALL_CALLS and rec["first_call_s"] > 0
        assert rec["first_call_s"] == pytest.approx(rec["calls_ms"][0] / 1e3)
        assert rec["steady_ms"] == pytest.approx(statistics.median(rec["calls_ms"][40:50]))
        assert set(rec["caches"]) == set(dense.FIRST_CALL_CACHES) and rec["caches_empty"] is True
    # each in a process of its own, with cache directories of its own
    assert len({rec["pid"] for rec in recs.values()} | {os.getpid()}) == 3
    assert len({d for rec in recs.values() for d in rec["caches"].values()}) == 2 * len(dense.FIRST_CALL_CACHES)
    assert recs["smoothloss"]["loss"] == pytest.approx(recs["F.cross_entropy"]["loss"], rel=1e-5)
    b, k = dense.FIRST_CALL_SIZE
    assert recs["smoothloss"]["compiled_kernels"] is (b * k >= res["compile_threshold"]
                                                      and recs["smoothloss"]["compile_failed"] is None)
    rows = {r["implementation"]: r for r in report["summary"]["first_call"]["rows"]}
    sl, ref = recs["smoothloss"], recs["F.cross_entropy"]
    assert rows["smoothloss"]["first_call_vs_builtin"] == sl["first_call_s"] / ref["first_call_s"]
    assert rows["smoothloss"]["steady_vs_builtin"] == sl["steady_ms"] / ref["steady_ms"]
    assert rows["F.cross_entropy"]["first_call_vs_builtin"] == rows["F.cross_entropy"]["steady_vs_builtin"] == 1.0
    for text in ((out / "bench.md").read_text(), docs.read_text()):
        assert "\nFirst call in a fresh process (empty Inductor cache): torch on the CPU, 4096×1000 " in text
        assert "| torch F.cross_entropy(label_smoothing) | " in text and "| 1.00× | 1.00× |" in text
        assert f"| {common.fmt_ratio(rows['smoothloss']['steady_vs_builtin'])} |" in text


def _fake_first_call() -> dict:
    def rec(key, first_s, steady_ms, **kw):
        return {"implementation": key, "first_call_s": first_s, "steady_ms": steady_ms,
                "calls_ms": [first_s * 1e3] + [steady_ms] * 49, **kw}

    return {"size": [4096, 1000], "calls": 50, "steady_calls": 10,
            "results": {"smoothloss": rec("smoothloss", 2.5, 4.0, compiled_kernels=True, compile_failed=None),
                        "F.cross_entropy": rec("F.cross_entropy", 0.05, 16.0)}}


def test_first_call_from_known_numbers():
    report = _fake_report()
    assert dense_report.summarise(report["frameworks"])["first_call"] is None
    report["frameworks"]["torch"]["first_call"] = _fake_first_call()
    assert not dense.failed(report["frameworks"])
    summary = dense_report.summarise(report["frameworks"])
    fc = summary["first_call"]
    assert fc["size"] == [4096, 1000] and fc["builtin"] == "F.cross_entropy" and fc["steady_calls"] == [41, 50]
    rows = {r["implementation"]: r for r in fc["rows"]}
    assert rows["smoothloss"]["first_call_vs_builtin"] == pytest.approx(50.0)
    assert rows["smoothloss"]["steady_vs_builtin"] == 0.25 and rows["smoothloss"]["compiled_kernels"] is True
    assert rows["F.cross_entropy"]["first_call_vs_builtin"] == rows["F.cross_entropy"]["steady_vs_builtin"] == 1.0
    report["summary"] = summary
    md = cli.markdown_tables(report)
    assert ("\nFirst call in a fresh process (empty Inductor cache): torch on the CPU, 4096×1000 float32 logits, "
            "integer labels, label_smoothing=0.1, forward+backward; each implementation in a new Python process "
            "whose `TORCHINDUCTOR_CACHE_DIR` and `TRITON_CACHE_DIR` are new empty directories.") in md
    assert "steady state: the median of calls 41–50 in the same process:\n" in md
    assert ("| implementation | first call s | steady-state ms | first call ÷ F.cross_entropy "
            "| steady state ÷ F.cross_entropy |\n|---|---:|---:|---:|---:|\n"
            "| smoothloss.cross_entropy [compiled] | 2.50 | 4.00 | 50.00× | 0.25× |\n"
            "| torch F.cross_entropy(label_smoothing) | 0.050 | 16.0 | 1.00× | 1.00× |\n") in md
    # a process that failed: its row says so, no ratio is made up, and the run counts as failed
    report["frameworks"]["torch"]["first_call"]["results"]["smoothloss"] = {
        "implementation": "smoothloss", "error": "worker exit status 1: boom"}
    assert dense.failed(report["frameworks"])
    report["summary"] = dense_report.summarise(report["frameworks"])
    row = report["summary"]["first_call"]["rows"][0]
    assert row["first_call_vs_builtin"] is None and row["steady_vs_builtin"] is None
    assert "| smoothloss.cross_entropy | failed: worker exit status 1: boom | | | |" in cli.markdown_tables(report)


def test_first_call_processes_get_new_empty_caches(monkeypatch):
    """``run_first_call``: one worker per implementation, each with cache directories that are new,
    empty and removed after it (what a process compiles there reaches no other)."""
    seen = []

    def fake_run_worker(spec, timeout_s, env=None):
        dirs = [Path(env[v]) for v in dense.FIRST_CALL_CACHES]
        assert all(d.is_dir() and not any(d.iterdir()) for d in dirs)
        for d in dirs:
            (d / "compiled").write_text("what a compile leaves")
        seen.append((spec, dirs))
        return {"implementation": spec["implementation"], "first_call_s": 1.0, "steady_ms": 2.0}

    monkeypatch.setattr(dense, "run_worker", fake_run_worker)
    fc = dense.run_first_call({"first_call_size": [8, 10], "smoothing": 0.1, "threads": 1}, 60.0)
    assert [spec["implementation"] for spec, _ in seen] == [i.key for i in dense.FIRST_CALL_IMPLS]
    for spec, _ in seen:
        assert spec["task"] == "first_call" and spec["framework"] == "torch" and spec["size"] == [8, 10]
        assert spec["smoothing"] == 0.1 and spec["threads"] == 1 and spec["device"] == "cpu"
    dirs = [d for _, ds in seen for d in ds]
    assert len(set(dirs)) == len(dirs) == 2 * len(dense.FIRST_CALL_CACHES) and not any(d.exists() for d in dirs)
    assert fc["size"] == [8, 10] and fc["calls"] == dense.FIRST_CALL_CALLS and list(fc["results"]) == [
        "smoothloss", "F.cross_entropy"]


def test_first_call_worker_in_process(tmp_path, monkeypatch):
    """The first-call worker itself, at a tiny size (eager kernels): every call timed, the steady
    state the median of the last ones, and whether the cache directories were empty."""
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    for v in dense.FIRST_CALL_CACHES:
        (tmp_path / v).mkdir()
        monkeypatch.setenv(v, str(tmp_path / v))
    spec = {"task": "first_call", "framework": "torch", "size": [8, 10], "smoothing": 0.1}
    recs = {key: dense.worker({**spec, "implementation": key}) for key in ("smoothloss", "F.cross_entropy")}
    for rec in recs.values():
        assert "error" not in rec and rec["caches_empty"] is True and rec["pid"] == os.getpid()
        assert len(rec["calls_ms"]) == dense.FIRST_CALL_CALLS and all(t > 0 for t in rec["calls_ms"])
        assert rec["first_call_s"] == pytest.approx(rec["calls_ms"][0] / 1e3)
        assert rec["steady_ms"] == pytest.approx(statistics.median(rec["calls_ms"][-dense.FIRST_CALL_STEADY:]))
    assert recs["smoothloss"]["loss"] == pytest.approx(recs["F.cross_entropy"]["loss"], rel=1e-5)
    (tmp_path / dense.FIRST_CALL_CACHES[0] / "stale").write_text("")
    assert dense.worker({**spec, "implementation": "F.cross_entropy"})["caches_empty"] is False


@pytest.mark.parametrize("argv, size", [
    (["--quick"], None),
    (["--quick", "--first-call"], list(dense.FIRST_CALL_SIZE)),
    ([], list(dense.FIRST_CALL_SIZE)),
    (["--no-first-call"], None),
])
def test_first_call_options(argv, size, tmp_path, monkeypatch):
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    rc, settings, _ = _settings([*argv, "--frameworks", "torch"], tmp_path, monkeypatch)
    assert rc == 0 and settings["first_call_size"] == size


# --------------------------------------------------------------------------- TensorFlow smoothing schedule

SCHEDULE_HEAD = "\nTensorFlow smoothing schedule (ε changes every step, eager, 512×4096): on the CPU, "
SL_LABEL = 'smoothloss.cross_entropy, set_compile_mode("always") (XLA backward)'
KERAS_LABEL = "Keras CategoricalCrossentropy(label_smoothing=ε) on one-hot, new each step"


def _smoothed_ce(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """The label-smoothed cross-entropy, mean over rows, in float64 NumPy."""
    x = x.astype(np.float64)
    logp = x - x.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return float(np.mean(-(1 - eps) * logp[np.arange(len(y)), y] - eps * logp.mean(1)))


def test_schedule_worker_in_process():
    """The schedule worker itself at 8×10, 4 steps: ε changes every step, every step is timed and
    its resident set read, smoothloss runs its XLA backward at every step and traces it at most once,
    both losses are the smoothed cross-entropy of that step's ε, and the compile mode is restored."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    import smoothloss

    mode = smoothloss.compile_mode()
    spec = {"task": "schedule", "framework": "tensorflow", "size": [8, 10], "steps": 4}
    recs = {key: dense.worker({**spec, "implementation": key}) for key in schedule.SCHEDULE_IMPLS}
    assert list(recs) == ["smoothloss", "keras.CCE"] and smoothloss.compile_mode() == mode
    x, y = schedule._inputs((8, 10))
    for rec in recs.values():
        assert "error" not in rec, rec["error"]
        assert rec["pid"] == os.getpid() and rec["size"] == [8, 10] and rec["steps"] == 4
        assert rec["eps"] == [0.01, 0.02, 0.03, 0.04]
        assert len(rec["step_ms"]) == len(rec["rss_mib"]) == len(rec["loss"]) == 4
        assert all(t > 0 for t in rec["step_ms"])
        if common.rss_now_and_hwm() is not None:
            assert all(r > 1 for r in rec["rss_mib"])
        assert rec["loss"] == pytest.approx([_smoothed_ce(x, y, e) for e in rec["eps"]], rel=1e-5)
        assert len(set(rec["loss"])) == 4  # ε did change
    sl = recs["smoothloss"]
    assert sl["compile_mode"] == "always" and sl["compile_failed"] is None and sl["compiled_calls"] == 4
    assert len(sl["traces"]) == 4 and sl["traces"] == sorted(sl["traces"])
    assert sl["traces"][-1] - sl["traces_before"] <= 1
    assert recs["keras.CCE"]["traces"] is None
    summary = schedule.summarise({"size": [8, 10], "steps": 4, "eps": schedule.epsilons(4), "results": recs})
    rows = {r["implementation"]: r for r in summary["rows"]}
    assert rows["smoothloss"]["traces"] <= 1 and rows["keras.CCE"]["traces"] is None
    assert summary["losses_match"] is True
    assert rows["smoothloss"]["median_ms"] == statistics.median(sl["step_ms"][1:])
    assert rows["smoothloss"]["rss_growth_mib"] == sl["rss_mib"][-1] - sl["rss_mib"][1]


def _fake_schedule() -> dict:
    """A hand-made schedule measurement: 16 steps, smoothloss traced once."""
    loss = [2.0 + 0.01 * i for i in range(16)]
    sl = {"implementation": "smoothloss", "steps": 16, "step_ms": [150.0] + [8.0 + i % 3 for i in range(15)],
          "rss_mib": [800.0] + [812.0] * 14 + [812.5], "traces_before": 0, "traces": [1] * 16, "loss": loss,
          "compile_mode": "always", "compiled_calls": 16, "compile_failed": None}
    keras = {"implementation": "keras.CCE", "steps": 16, "step_ms": [30.0] + [20.0 + i % 5 for i in range(15)],
             "rss_mib": [700.0] + [705.0] * 14 + [717.5], "traces_before": None, "traces": None, "loss": list(loss)}
    return {"size": [512, 4096], "steps": 16, "eps": schedule.epsilons(16),
            "results": {"smoothloss": sl, "keras.CCE": keras}}


def test_schedule_from_known_numbers():
    report = _fake_report()
    assert dense_report.summarise(report["frameworks"])["schedule"] is None
    report["frameworks"]["torch"]["first_call"] = _fake_first_call()
    report["frameworks"]["tensorflow"]["schedule"] = _fake_schedule()
    assert not dense.failed(report["frameworks"])
    report["summary"] = summary = dense_report.summarise(report["frameworks"])
    s = summary["schedule"]
    assert s["size"] == [512, 4096] and s["steps"] == 16 and s["builtin"] == "keras.CCE"
    assert s["eps"][0] == 0.01 and s["eps"][-1] == 0.16 and s["losses_match"] is True
    rows = {r["implementation"]: r for r in s["rows"]}
    assert list(rows) == ["smoothloss", "keras.CCE"]
    sl, kr = rows["smoothloss"], rows["keras.CCE"]
    assert (sl["traces"], sl["rss_growth_mib"], sl["median_ms"], sl["first_step_ms"]) == (1, 0.5, 9.0, 150.0)
    assert (kr["traces"], kr["rss_growth_mib"], kr["median_ms"], kr["first_step_ms"]) == (None, 12.5, 22.0, 30.0)
    assert sl["vs_builtin"] == 9.0 / 22.0 and kr["vs_builtin"] == 1.0 and sl["compiled_calls"] == 16
    md = cli.markdown_tables(report)
    assert (SCHEDULE_HEAD + "float32 logits in a `tf.Variable`, integer labels, 16 eager steps (forward+backward "
            "under a `tf.GradientTape`) with ε = 0.01·(step+1), from 0.01 to 0.16; each implementation in a new "
            "Python process.") in md
    assert "RSS growth: VmRSS after step 16 minus after step 2; median step ms: of steps 2–16" in md
    assert ("| implementation | traces | RSS growth steps 2–16 MiB | median step ms | ÷ Keras |\n"
            "|---|---:|---:|---:|---:|\n"
            f"| {SL_LABEL} | 1 | 0.50 | 9.00 | 0.41× |\n"
            f"| {KERAS_LABEL} | — | 12.5 | 22.0 | 1.00× |\n\n"
            "The two losses agree at every step (relative difference ≤ 0.0001).\n") in md
    # after the first-call section, before the tiny batch
    assert md.index("\nFirst call in a fresh process") < md.index(SCHEDULE_HEAD) < md.index("\nTiny batch 32×10")
    # a function traced again at every step, its resident set growing, and a loss that differs
    sched = report["frameworks"]["tensorflow"]["schedule"]["results"]
    sched["smoothloss"].update(traces=list(range(1, 17)), rss_mib=[800.0 + 8 * i for i in range(16)],
                               step_ms=[200.0] + [40.0] * 15)
    sched["keras.CCE"]["loss"][3] += 0.01
    report["summary"] = dense_report.summarise(report["frameworks"])
    row = report["summary"]["schedule"]["rows"][0]
    assert (row["traces"], row["rss_growth_mib"], row["median_ms"]) == (16, 112.0, 40.0)
    md = cli.markdown_tables(report)
    assert f"| {SL_LABEL} | 16 | 112.0 | 40.0 | 1.82× |\n" in md
    assert "**The two losses differ** at some step (by more than 0.0001 relative)." in md
    # a process that failed: its row says so, no ratio is made up, and the run counts as failed
    sched["smoothloss"] = {"implementation": "smoothloss", "error": "worker exit status 1: boom"}
    assert dense.failed(report["frameworks"])
    report["summary"] = dense_report.summarise(report["frameworks"])
    s = report["summary"]["schedule"]
    assert s["rows"][0]["vs_builtin"] is None and s["rows"][0]["traces"] is None and s["losses_match"] is None
    md = cli.markdown_tables(report)
    assert f"| {SL_LABEL} | failed: worker exit status 1: boom | | | |\n" in md
    assert "The two losses" not in md


def test_schedule_processes(monkeypatch):
    """``schedule.run``: one worker per implementation, smoothloss first, each given the size,
    steps, threads and device; ``dense.run`` runs it after TensorFlow's timing, unless switched off."""
    seen = []

    def fake_run_worker(spec, timeout_s, env=None):
        seen.append(spec)
        return {"implementation": spec["implementation"], "step_ms": [1.0, 2.0], "rss_mib": [1.0, 1.0],
                "traces": None, "loss": [1.0, 1.0]}

    monkeypatch.setattr(schedule, "run_worker", fake_run_worker)
    settings = {"schedule_size": [8, 10], "schedule_steps": 4, "threads": 1}
    measured = schedule.run(settings, 60.0)
    assert [spec["implementation"] for spec in seen] == ["smoothloss", "keras.CCE"]
    for spec in seen:
        assert spec == {"task": "schedule", "framework": "tensorflow", "implementation": spec["implementation"],
                        "size": [8, 10], "steps": 4, "threads": 1, "device": "cpu"}
    assert measured["size"] == [8, 10] and measured["steps"] == 4 and measured["eps"] == [0.01, 0.02, 0.03, 0.04]
    assert list(measured["results"]) == ["smoothloss", "keras.CCE"]

    calls = []
    monkeypatch.setattr(schedule, "run", lambda settings, timeout_s: calls.append(settings) or {"results": {}})
    timing = {"framework": "tensorflow", "sizes": [], "dispatch": None, "memory": [], "crossover": None}
    monkeypatch.setattr(dense, "run_worker", lambda spec, timeout_s, env=None: dict(timing))
    base = {"frameworks": ["tensorflow"], "sizes": [], "smoothing": 0.1, "repeats": 1, "warmup": 1,
            "min_sample_s": 0.001, "tiny": False, "tiny_min_sample_s": 0.001, "memory": False, "quick": True,
            "threads": None, "schedule_steps": 16}
    res = dense.run({**base, "schedule_size": [512, 4096]}, 60.0)
    assert res["tensorflow"]["schedule"] == {"results": {}} and calls[0]["schedule_size"] == [512, 4096]
    assert "schedule" not in dense.run({**base, "schedule_size": None}, 60.0)["tensorflow"] and len(calls) == 1
    monkeypatch.setattr(dense, "run_worker", lambda spec, timeout_s, env=None: {"error": "worker exit status 1"})
    assert "schedule" not in dense.run({**base, "schedule_size": [512, 4096]}, 60.0)["tensorflow"]
    assert len(calls) == 1  # no schedule for a framework whose timing failed


@pytest.mark.parametrize("argv, size", [
    (["--quick"], None),
    (["--quick", "--schedule"], list(schedule.SCHEDULE_SIZE)),
    ([], list(schedule.SCHEDULE_SIZE)),
    (["--no-schedule"], None),
])
def test_schedule_options(argv, size, tmp_path, monkeypatch):
    if "tensorflow" not in INSTALLED:
        pytest.skip("tensorflow is not installed")
    rc, settings, _ = _settings([*argv, "--frameworks", "tensorflow"], tmp_path, monkeypatch)
    assert rc == 0 and settings["schedule_size"] == size and settings["schedule_steps"] == 16


def test_schedule_flag_parses_and_is_in_the_help(capsys):
    p = cli.build_parser()
    assert p.parse_args(["--no-schedule"]).no_schedule is True and p.parse_args([]).no_schedule is False
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--no-schedule skip TensorFlow's smoothing schedule: 16 eager steps at 512×4096" in out


def test_quick_run_measures_the_tensorflow_schedule(quick_run):
    if "tensorflow" not in INSTALLED:
        pytest.skip("tensorflow is not installed")
    _, out, docs, report = quick_run
    assert report["settings"]["schedule_size"] == list(schedule.SCHEDULE_SIZE)
    measured = report["frameworks"]["tensorflow"]["schedule"]
    assert measured["size"] == [512, 4096] and measured["steps"] == 16 and measured["eps"] == schedule.epsilons(16)
    recs = measured["results"]
    assert list(recs) == ["smoothloss", "keras.CCE"]
    for rec in recs.values():
        assert "error" not in rec, rec["error"]
        assert len(rec["step_ms"]) == len(rec["rss_mib"]) == len(rec["loss"]) == 16
    assert len({rec["pid"] for rec in recs.values()} | {os.getpid()}) == 3  # a fresh process each
    sl = recs["smoothloss"]
    # a fresh process: the XLA backward is traced at the first step and never again
    assert sl["traces_before"] == 0 and sl["traces"] == [1] * 16
    assert sl["compiled_calls"] == 16 and sl["compile_failed"] is None
    s = report["summary"]["schedule"]
    assert s["losses_match"] is True
    rows = {r["implementation"]: r for r in s["rows"]}
    ref = statistics.median(recs["keras.CCE"]["step_ms"][1:])
    for key, row in rows.items():
        rec = recs[key]
        assert row["median_ms"] == statistics.median(rec["step_ms"][1:])
        assert row["rss_growth_mib"] == rec["rss_mib"][15] - rec["rss_mib"][1]
        assert row["vs_builtin"] == row["median_ms"] / ref
    assert rows["smoothloss"]["traces"] == 1 and rows["keras.CCE"]["traces"] is None
    sl_row = rows["smoothloss"]
    line = (f"| {SL_LABEL} | 1 | {schedule._fmt_mib(sl_row['rss_growth_mib'])} "
            f"| {common.fmt_ms(sl_row['median_ms'])} | {common.fmt_ratio(sl_row['vs_builtin'])} |")
    for text in ((out / "bench.md").read_text(), docs.read_text()):
        assert SCHEDULE_HEAD in text and line in text


@pytest.mark.parametrize("load, warned", [((3.2, 2.0, 1.0), True), ((0.1, 0.2, 0.3), False)])
def test_load_average_warning(load, warned, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common.os, "getloadavg", lambda: load)
    rc, _, report = _settings(["--quick", "--threads", "1", "--frameworks", "torch"], tmp_path, monkeypatch)
    err = capsys.readouterr().err
    md = (tmp_path / "bench.md").read_text()
    start = ("load average 3.2 at the start: another process is using the CPUs; these timings are not reliable")
    end = "load average 3.2 at the end (this run used 1 thread): another process is using the CPUs"
    assert rc == 0 and report["machine"]["loadavg_start"] == list(load)
    if warned:
        assert f"warning: {start}\n" in err and f"warning: {end}" in err
        assert f"**Warning:** {start}." in md and end in md and report["load_warnings"][0] == start
    else:
        assert "warning:" not in err and "Warning" not in md and report["load_warnings"] == []


def test_pages_speak_to_users(quick_run):
    _, out, docs, report = quick_run
    for text in ((out / "bench.md").read_text(), docs.read_text()):
        assert "-dirty" not in text and "issue" not in text.lower() and "sha256" not in text
        assert f"smoothloss {report['machine']['versions']['smoothloss']}" in text
    m = dict(report["machine"], smoothloss_git="0123456789ab-dirty")
    assert "0123456789ab" not in cli._machine_line(m)
    assert "(git 0123456789ab)" in cli._machine_line(dict(m, smoothloss_git="0123456789ab"))


def test_device_default_and_spelling():
    p = cli.build_parser()
    assert p.parse_args([]).device == "cpu"
    assert p.parse_args(["--device", "cuda:1"]).device == "cuda:1"


def test_missing_device_is_refused(tmp_path, capsys):
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert bench.main(["--device", "GPU", "--frameworks", "torch", "--quick", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no cuda device: torch has cpu\n" in err
    assert not (tmp_path / "bench.json").exists()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", " ", "--out", str(tmp_path)])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- --quick: its configuration, its verdict

QUICK_SETTINGS = {  # exactly what --quick measures (and what its help's "under a minute" was timed with)
    "sizes": [[4096, 1000]], "implementations": "main", "repeats": 10, "warmup": 3, "min_sample_s": 0.02,
    "memory": True, "memory_mode": "in-process: in each framework's timing process, before its timings, on the steps then timed (--quick)",
    "tiny": False, "first_call_size": None, "schedule_size": None, "checks": False, "crossover_sizes": [],
    "linear_sizes": [], "quick": True, "device": "cpu",
}


def test_quick_selects_exactly_the_quick_configuration(tmp_path, monkeypatch):
    monkeypatch.setattr(dense, "installed", lambda f: True)
    rc, settings, report = _settings(["--quick"], tmp_path, monkeypatch)
    assert rc == 0 and {k: settings[k] for k in QUICK_SETTINGS} == QUICK_SETTINGS
    assert settings["frameworks"] == ["torch", "jax", "tensorflow"] and settings["skipped"] == []
    assert dense.QUICK_SIZES == ((4096, 1000),) and dense.VERDICT_SIZE == (4096, 1000)
    assert [i.key for f in FRAMEWORKS for i in dense.selected_impls(f, "main")] == [
        "smoothloss", "F.cross_entropy", "smoothloss", "optax", "smoothloss", "keras.CCE"]
    assert report["linear"] is None  # no linear benchmark in --quick
    # the linear benchmark's own quick sizes only with --only-linear
    monkeypatch.setattr(linear, "run", _fake_linear_run)
    bench.main(["--quick", "--only-linear", "--out", str(tmp_path)])
    lin = json.loads((tmp_path / "bench.json").read_text())["linear"]
    assert lin["settings"]["sizes"] == [list(s) for s in linear.QUICK_SIZES]


def test_quick_extras_on_request(tmp_path, monkeypatch):
    monkeypatch.setattr(dense, "installed", lambda f: True)
    argv = ["--quick", "--all-implementations", "--tiny", "--first-call", "--schedule", "--checks", "--crossover"]
    rc, settings, _ = _settings(argv, tmp_path, monkeypatch)
    assert rc == 0 and settings["implementations"] == "all" and settings["tiny"] and settings["checks"]
    assert settings["first_call_size"] == [4096, 1000] and settings["schedule_size"] == [512, 4096]
    assert settings["crossover_sizes"] == [list(s) for s in dense.CROSSOVER_SIZES]
    rc, full, _ = _settings([], tmp_path, monkeypatch)  # the full run: every extra, every implementation
    assert full["implementations"] == "all" and full["tiny"] and full["checks"] and full["first_call_size"]
    assert full["sizes"] == [list(s) for s in dense.DEFAULT_SIZES] and full["repeats"] == 10
    assert full["memory_mode"] == "fresh process per framework × implementation × size"


@pytest.mark.parametrize("name", ["tiny", "first-call", "schedule", "checks"])
def test_contradicting_extras_exit_2(name, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", f"--{name}", f"--no-{name}", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_help_of_quick_says_what_it_measures(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ("--quick a check a user can act on, in under a minute on 2 CPUs with torch, jax and TensorFlow: "
            "4096×1000 float32 only, smoothloss against each framework's own loss") in out
    assert "--first-call with --quick: measure it too" in out and "--quick: 4096x1000)" in out
    assert "tiny sizes" not in out


def _fake_quick_frameworks() -> dict:
    """What dense.run returns for --quick: torch and TensorFlow at 4096×1000, TensorFlow's memory failed."""
    mem = [{"implementation": k, "size": [4096, 1000], "extra_mib": v, "extra_over_logits": v / 15.625,
            "logits_mib": 15.625} for k, v in (("smoothloss", 15.8), ("F.cross_entropy", 46.9))]
    tf_mem = [{"implementation": "smoothloss", "size": [4096, 1000], "logits_mib": 15.625, "error": "boom"}]
    return {
        "torch": {"sizes": [{"size": [4096, 1000], "results": {"smoothloss": _rec(4.5),
                                                               "F.cross_entropy": _rec(10.0)}}],
                  "memory": mem, "dispatch": None, "crossover": None},
        "tensorflow": {"sizes": [{"size": [4096, 1000], "results": {"smoothloss": _rec(5.0),
                                                                    "keras.CCE": _rec(10.0)}}],
                       "memory": tf_mem, "dispatch": None, "crossover": None},
    }


def _fake_quick_report(**settings) -> dict:
    frameworks = _fake_quick_frameworks()
    s = {"smoothing": 0.1, "repeats": 10, "quick": True, "memory": True, "device": "cpu",
         "frameworks": ["torch", "tensorflow"], "skipped": ["jax"], "no_device": [], **settings}
    return {"settings": s, "frameworks": frameworks, "summary": dense_report.summarise(frameworks),
            "elapsed_s": 42.4, "load_warnings": []}


VERDICT_HEAD = ("Verdict: time = median of 10 interleaved samples; memory = peak resident set of one step beyond "
                "its inputs, measured in each framework's timing process.")
TORCH_VERDICT = ("torch: at 4096×1000 float32 on cpu, smoothloss is 0.45× F.cross_entropy's time and 0.34× its "
                 "memory (extra MiB 15.8 vs 46.9)")
JAX_SKIPPED = 'jax: not installed, skipped; pip install "smoothloss[jax]" adds it'
TF_VERDICT = ("tensorflow: at 4096×1000 float32 on cpu, smoothloss is 0.50× Keras CategoricalCrossentropy's time "
              "(memory: measurement failed, see bench.json)")


def test_verdict_lines_from_a_fake_report():
    report = _fake_quick_report()
    assert dense_report.verdict_lines(report) == [VERDICT_HEAD, TORCH_VERDICT, JAX_SKIPPED, TF_VERDICT]
    # a framework that failed, one whose loss differs, and a framework without the device
    report["frameworks"]["torch"] = {"error": "worker exit status 1: boom"}
    report["frameworks"]["tensorflow"]["sizes"][0]["results"]["keras.CCE"]["matches_smoothloss"] = False
    report["settings"].update(device="cuda", no_device=["jax"], skipped=[])
    report["summary"] = dense_report.summarise(report["frameworks"])
    assert dense_report.verdict_lines(report) == [
        "Verdict: time = median of 10 interleaved samples; memory = peak device memory of one step beyond its "
        "inputs (torch: the CUDA allocator's peak; jax: XLA's memory analysis of the compiled step), measured in "
        "each framework's timing process.",
        "torch: failed, no verdict (worker exit status 1: boom)",
        "jax: no cuda device here, skipped",
        "tensorflow: at 4096×1000 float32 on cuda, smoothloss is 0.50× Keras CategoricalCrossentropy's time "
        "(memory: measurement failed, see bench.json); WARNING: the two losses differ",
    ]
    # torch's compiled kernels failed: the verdict says that the eager kernels were timed
    report = _fake_quick_report()
    report["frameworks"]["torch"]["compile_failed"] = "RuntimeError: no C++ compiler"
    assert dense_report.verdict_lines(report)[1] == (
        TORCH_VERDICT + "; smoothloss ran its eager kernels, torch.compile failed here (RuntimeError: no C++ compiler)")
    # an implementation that failed at the verdict's size; no memory asked for
    report = _fake_quick_report(memory=False, quick=False)
    report["frameworks"]["torch"]["sizes"][0]["results"]["F.cross_entropy"] = {"error": "RuntimeError: oom"}
    report["frameworks"]["torch"]["memory"] = []
    report["summary"] = dense_report.summarise(report["frameworks"])
    assert dense_report.verdict_lines(report)[:2] == [
        "Verdict: time = median of 10 interleaved samples; memory not measured (--no-memory).",
        "torch: at 4096×1000 float32 on cpu, no verdict: F.cross_entropy failed (RuntimeError: oom)"]


def test_closing_text_ends_with_the_verdicts_and_the_load_warning():
    report = _fake_quick_report()
    report["load_warnings"] = ["load average 3.2 at the start: another process is using the CPUs; these timings "
                               "are not reliable"]
    assert cli.closing_text(report, "/tmp/bq", False).splitlines() == [
        "JSON, Markdown in /tmp/bq/ (42 s); the full tables are in /tmp/bq/bench.md",
        VERDICT_HEAD, TORCH_VERDICT, JAX_SKIPPED, TF_VERDICT,
        "warning: load average 3.2 at the start: another process is using the CPUs; these timings are not reliable",
    ]


def test_quick_prints_no_tables_and_ends_with_the_verdicts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dense, "installed", lambda f: f != "jax")
    monkeypatch.setattr(dense, "run", lambda settings, timeout_s: _fake_quick_frameworks())
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 1  # TensorFlow's memory failed
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [VERDICT_HEAD, TORCH_VERDICT, JAX_SKIPPED, TF_VERDICT]
    assert out[0].startswith(f"JSON, Markdown in {tmp_path}/ (") and not (tmp_path / "bench.png").exists()
    md = (tmp_path / "bench.md").read_text()  # the tables: in the file only
    assert "| torch | 4096×1000 (15.62) | smoothloss.cross_entropy | 4.50 |" in md
    assert md.index("## Summary") < md.index("## Every implementation and size")
    # the full run prints its tables, and the verdicts after them
    monkeypatch.setattr(dense, "run", lambda settings, timeout_s: _fake_quick_frameworks())
    bench.main(["--out", str(tmp_path), "--no-memory"])
    out = capsys.readouterr().out
    assert "| torch | 4096×1000 (15.62) |" in out
    assert out.rstrip().splitlines()[-1] == ("tensorflow: at 4096×1000 float32 on cpu, smoothloss is 0.50× Keras "
                                             "CategoricalCrossentropy's time")


def test_device_plumbing_without_a_gpu(tmp_path, monkeypatch, capsys):
    """--device cuda: the frameworks without the device are skipped and said so in the verdict, the
    others are run on it; no framework with it: refused before anything runs."""
    monkeypatch.setattr(dense, "installed", lambda f: f != "tensorflow")
    monkeypatch.setattr(cli, "frameworks_on", lambda device, fws: ("cuda", ["torch"], "no cuda device: ..."))
    monkeypatch.setattr(dense, "run", lambda settings, timeout_s: {"torch": _fake_quick_frameworks()["torch"]})
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert bench.main(["--quick", "--device", "GPU", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    s = report["settings"]
    assert s["device"] == "cuda" and s["frameworks"] == ["torch"] and s["no_device"] == ["jax"]
    assert s["skipped"] == ["tensorflow"] and s["checks"] is False
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [
        "torch: at 4096×1000 float32 on cuda, smoothloss is 0.45× F.cross_entropy's time and 0.34× its memory "
        "(extra MiB 15.8 vs 46.9)",
        "jax: no cuda device here, skipped",
        'tensorflow: not installed, skipped; pip install "smoothloss[tensorflow]" adds it']
    monkeypatch.setattr(cli, "frameworks_on", lambda device, fws: ("cuda", [], "no cuda device: torch has cpu"))
    assert bench.main(["--quick", "--device", "cuda", "--out", str(tmp_path / "none")]) == 1
    assert "no cuda device: torch has cpu" in capsys.readouterr().err
    assert not (tmp_path / "none" / "bench.json").exists()


def test_quick_worker_measures_memory_first_on_the_steps_it_times():
    """--quick's timing worker, in this process: memory first (on the steps then timed, their first
    calls made there and kept as the first calls), then the timings, of the main implementations only."""
    if "torch" not in INSTALLED:
        pytest.skip("torch is not installed")
    spec = {"task": "time", "framework": "torch", "sizes": [[64, 100]], "smoothing": 0.1, "repeats": 2,
            "warmup": 1, "min_sample_s": 0.001, "tiny": False, "tiny_min_sample_s": 0.001,
            "memory_in_process": True, "memory_sizes": [[64, 100]], "implementations": "main"}
    res = dense.worker(spec)
    recs = res["sizes"][0]["results"]
    assert list(recs) == ["smoothloss", "F.cross_entropy"] and "compile_failed" in res
    assert [(m["implementation"], m["size"], m["reused_timing_steps"]) for m in res["memory"]] == [
        ("smoothloss", [64, 100], True), ("F.cross_entropy", [64, 100], True)]
    for m in res["memory"]:
        assert "error" not in m and (m["extra_mib"] is None or m["extra_mib"] >= 0)
    for rec in recs.values():
        assert len(rec["samples_ms"]) == 2 and rec["first_call_ms"] > 0 and rec["matches_smoothloss"]


def test_frameworks_on_keeps_the_gpu_for_the_workers(monkeypatch):
    """The parent asks each framework for its devices: that must not make jax preallocate most of
    the GPU (or TensorFlow all of it) for the whole run, out of reach of the workers."""
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    from smoothloss.testing import drivers

    class NoGpu:
        framework = "jax"

        def __init__(self, device="cpu"):
            self.device = device

        def devices(self):
            return ["cpu"]

        def require_device(self):
            raise RuntimeError("jax has no cuda device (it has cpu)")

    monkeypatch.setitem(drivers.DRIVERS, "jax", NoGpu)
    monkeypatch.setattr(drivers, "get_driver", lambda f, device: NoGpu(device))
    assert cli.frameworks_on("gpu:1", ["jax"]) == ("cuda:1", [], "no cuda:1 device: jax has cpu")
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    env = common.child_env("jax", device="cuda:1")
    assert env["JAX_PLATFORMS"] == "cuda" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


# --------------------------------------------------------------------------- the docs page


def _fake_machine() -> dict:
    return {"cpu_model": "Test CPU", "cpus_usable": 2, "cpu_count": 2, "memory_gib": 8.0, "platform": "Linux-test",
            "python": "3.11.7", "versions": {"smoothloss": "0.1.0", "torch": "2.9.0"}, "smoothloss_git": None,
            "loadavg_start": [0.1, 0.1, 0.1], "loadavg_end": [1.9, 1.0, 0.5]}


def _fake_docs_report() -> dict:
    report = _fake_report()
    fws = report["frameworks"]
    fws["torch"]["first_call"] = _fake_first_call()
    fws["tensorflow"]["schedule"] = _fake_schedule()
    fws["torch"]["checks"] = {"torch": {"sizes": [{"size": [4096, 1000],
                                                   "median_ms": {"checked": 2.0, "unchecked": 2.0}}]}}
    report["settings"].update(repeats=10, warmup=3, threads=2, device="cpu", quick=False)
    report.update(machine=_fake_machine(), started="2026-12-07 02:22:32 UTC", elapsed_s=691.0, note=None,
                  load_warnings=[], linear=_fake_linear_run(["torch"], [(64, 8, 32)]))
    report["summary"] = dense_report.summarise(fws)
    return report


DOCS_HEADINGS = [
    "# Benchmarks", "## Summary", "## How it was measured", "## Every implementation and size",
    "### Compiled against eager kernels (torch)", "### First call in a fresh process (torch)",
    "### Smoothing schedule (TensorFlow)", "### Run-time label check in compiled steps", "### Tiny batch",
    "### Targets", "## Chunked linear cross-entropy",
]


def _headings(page: str) -> list[str]:
    """The Markdown headings of a page, outside its front matter and its code blocks."""
    lines, out, fenced = page.splitlines(), [], False
    if lines and lines[0] == "---":
        lines = lines[lines.index("---", 1) + 1:]
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            out.append(line)
    return out


def test_docs_page_starts_with_the_summary():
    report = _fake_docs_report()
    page = cli.docs_page(report, "benchmarks.png", "python -m smoothloss bench --docs docs/benchmarks.md")
    assert page.startswith("---\n# The tables need the width: no table of contents on this page (its sections are "
                           "the headings below).\nhide:\n  - toc\n---\n\n# Benchmarks\n\n")
    assert _headings(page) == DOCS_HEADINGS
    summary, method = page.index("\n## Summary\n"), page.index("\n## How it was measured\n")
    ratios = page.index("\n| torch | 1024×32000 | 0.67× (timm) | 0.33× (F.cross_entropy) | 1.25× | 0.50× "
                        "| 125.0 / 375.0 / 375.0 |\n")
    plot = page.index("\n[![Forward+backward time against K, one panel per framework (click for the full-size "
                      "image)](benchmarks.png)](benchmarks.png)\n{ .bench-plot }\n")
    machine = page.index("**Machine:** Test CPU")
    assert summary < ratios < plot < method < machine < page.index("How it is measured: each framework")
    assert "[Chunked linear cross-entropy](#chunked-linear-cross-entropy); which of the project's targets this run " \
           "met is in [Targets](#targets).\n" in page[summary:method]
    # no table before the summary; the full table after the method
    assert "|" not in page[:summary]
    assert method < page.index("\n| torch | 1024×32000 (125.00) | torch F.cross_entropy(label_smoothing) | 300 |")
    # no plot: no image, no link
    assert "bench-plot" not in cli.docs_page(report, None, "python -m smoothloss bench")


def test_docs_page_in_the_tree_has_the_generated_layout():
    """docs/benchmarks.md was written by this generator (its numbers from the last full run): the
    same sections in the same order, the plot a link to itself with the stylesheet's class."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    assert _headings(page) == DOCS_HEADINGS
    assert "[![Forward+backward time against K, one panel per framework (click for the full-size image)]" \
           "(benchmarks.png)](benchmarks.png)\n{ .bench-plot }\n" in page
    css = (Path(__file__).resolve().parents[1] / "docs" / "stylesheets" / "extra.css").read_text()
    assert ".md-typeset .bench-plot img {\n  max-width: none;\n}" in css


# --------------------------------------------------------------------------- chunked linear cross-entropy

LINEAR_FIELDS = ("time_s", "time_samples_s", "peak_mib", "peak_samples_mib", "peak_before_mib", "extra_mib", "loss")


def test_quick_run_measures_the_linear_path(quick_run):
    rc, _, _, report = quick_run
    lin = report["linear"]
    s = lin["settings"]
    assert s["sizes"] == [list(size) for size in linear.QUICK_SIZES]
    assert s["repeats"] == 1 and s["chunk"] is None and s["smoothing"] == 0.1
    assert s["frameworks"] + s["skipped"] == ["torch"]
    assert [(e["framework"], e["size"]) for e in lin["results"]] == [
        (fw, list(size)) for fw in s["frameworks"] for size in linear.QUICK_SIZES
    ]
    for e in lin["results"]:
        assert "errors" not in e, e["errors"]
        assert e["losses_match"], (e["unchunked"]["loss"], e["chunked"]["loss"])
        assert e["logits_mib"] == linear.logits_mib(e["size"]) and 0 < e["chunk_rows"] <= e["size"][0]
        for mode in linear.MODES:
            summary, runs = e[mode], e["runs"][mode]
            assert all(k in summary for k in LINEAR_FIELDS), summary
            assert summary["runs"] == len(runs) == s["repeats"] and summary["failed"] == 0
            assert summary["time_s"] > 0 and len(summary["time_samples_s"]) == s["repeats"]
            assert summary["peak_mib"] >= summary["peak_before_mib"] > 0
            assert summary["extra_mib"] >= 0
            for r in runs:
                assert r["mode"] == mode and r["framework"] == e["framework"] and r["method"]
                assert r["peak_mib"] >= r["peak_before_mib"] > 0 and r["first_step_s"] > 0
        assert e["time_ratio"] > 0 and e["peak_ratio"] > 0
        assert e["extra_ratio"] is None or e["extra_ratio"] >= 0
        # and against the framework's own loss on the unchunked logits
        assert e["time_ratio_builtin"] > 0 and e["peak_ratio_builtin"] > 0
        assert e["time_ratio_builtin"] == linear.ratio(e["chunked"]["time_s"], e["builtin"]["time_s"])
    assert rc == 0


def test_linear_table_in_markdown_and_docs(quick_run):
    _, out, docs, report = quick_run
    for text in ((out / "bench.md").read_text(), docs.read_text()):
        assert "## Chunked linear cross-entropy" in text
        assert "| peak MiB unchunked | peak MiB chunked | peak ratio |" in text
        assert "| time s builtin | time s chunked | time ratio | peak MiB builtin |" in text
        for e in report["linear"]["results"]:
            row = f"| {e['framework']} | {size_name(e['size'])} | {linear.BUILTIN[e['framework']]} |"
            assert any(line.startswith(row) for line in text.splitlines())
            assert any(line.startswith(f"| {e['framework']} | {size_name(e['size'])} (")
                       and line.count("×") >= 5 for line in text.splitlines())


def _fake_linear_run(frameworks, sizes, chunk=None, repeats=3, **_):
    """``linear.run`` without subprocesses: made-up runs, summarised for real."""

    def rec(fw, mode, r, t, peak):
        return {"framework": fw, "mode": mode, "repeat": r, "time_s": t, "peak_mib": peak,
                "peak_before_mib": 100.0, "loss": 6.9, "method": "fake"}

    results = []
    for fw in frameworks:
        for size in sizes:
            runs = {"unchunked": [rec(fw, "unchunked", r, 2.0 + r, 300.0) for r in range(repeats)],
                    "builtin": [rec(fw, "builtin", r, 4.0 + r, 600.0) for r in range(repeats)],
                    "chunked": [rec(fw, "chunked", r, 1.0 + r, 150.0) for r in range(repeats)]}
            results.append(linear.summarise_entry(fw, size, chunk, runs))
    settings = {"sizes": [list(s) for s in sizes], "frameworks": list(frameworks), "skipped": [], "chunk": chunk,
                "repeats": repeats, "smoothing": 0.1, "threads": None}
    return {"settings": settings, "results": results}


def test_only_linear_skips_the_frameworks(tmp_path, monkeypatch):
    monkeypatch.setattr(linear, "run", _fake_linear_run)
    docs = tmp_path / "linear.md"
    rc = bench.main(["--only-linear", "--linear", "64x8x32,16x4x8", "--linear-frameworks", "torch,jax",
                     "--linear-chunk", "16", "--linear-repeats", "3", "--out", str(tmp_path), "--docs", str(docs)])
    assert rc == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["frameworks"] == {} and report["settings"]["only_linear"] is True
    assert report["settings"]["sizes"] == []
    assert [(e["framework"], e["size"]) for e in report["linear"]["results"]] == [
        ("torch", [64, 8, 32]), ("torch", [16, 4, 8]), ("jax", [64, 8, 32]), ("jax", [16, 4, 8])]
    e = report["linear"]["results"][0]
    assert e["chunk"] == 16 and e["chunk_rows"] == 16
    assert e["unchunked"]["time_s"] == 3.0 and e["chunked"]["time_s"] == 2.0 and e["time_ratio"] == 2 / 3
    assert e["builtin"]["time_s"] == 5.0 and e["time_ratio_builtin"] == 2 / 5 and e["peak_ratio_builtin"] == 0.25
    assert e["unchunked"]["time_samples_s"] == [2.0, 3.0, 4.0]
    assert e["peak_ratio"] == 0.5 and e["extra_ratio"] == 0.25 and e["losses_match"]
    md = (tmp_path / "bench.md").read_text()
    assert "| torch | 64×8×32 (0) | 16 | 3 | 2 | 0.67× | 300 | 150 | 0.50× | 200 → 50.0 | 0.25× |" in md
    assert "| jax | 16×4×8 (0) | 16 | 3 | 2 |" in md
    assert "smoothloss.cross_entropy" not in md  # no table of the frameworks' losses
    page = docs.read_text()
    assert page.startswith("# Benchmark: chunked linear cross-entropy") and report["command"] in page
    assert not (tmp_path / "bench.png").exists()


def test_linear_failure_is_reported(tmp_path, monkeypatch):
    def broken(frameworks, sizes, chunk=None, repeats=3, **_):
        runs = {"unchunked": [{"framework": "torch", "mode": "unchunked", "error": "MemoryError: boom"}],
                "chunked": [{"framework": "torch", "mode": "chunked", "time_s": 1.0, "peak_mib": 2.0,
                             "peak_before_mib": 1.0, "loss": 1.0}]}
        return {"settings": {"sizes": [list(sizes[0])], "frameworks": ["torch"], "skipped": [], "chunk": None,
                             "repeats": 1, "smoothing": 0.1, "threads": None},
                "results": [linear.summarise_entry("torch", sizes[0], None, runs)]}

    monkeypatch.setattr(linear, "run", broken)
    assert bench.main(["--only-linear", "--linear", "8x4x16", "--out", str(tmp_path)]) == 1
    md = (tmp_path / "bench.md").read_text()
    assert "| torch | 8×4×16 (0) | default (8) | failed: MemoryError: boom |" in md


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_linear_steps_agree_in_process(fw):
    """The benchmark's own steps: both paths give the same loss and gradients in each framework."""
    if not linear.installed(fw):
        pytest.skip(f"{fw} is not installed")
    inputs = linear.make_inputs((10, 4, 12), seed=3)
    outs = {}
    for mode in linear.MODES:
        step = linear.build_step(fw, mode, *(a.copy() for a in inputs), chunk=3)
        out = step.run()
        outs[mode] = (step.loss(out), *step.grads(out))
        step.reset()
    (lu, hu, wu), (lc, hc, wc), (lb, hb, wb) = outs["unchunked"], outs["chunked"], outs["builtin"]
    assert lc == pytest.approx(lu, rel=1e-5) and lb == pytest.approx(lu, rel=1e-5)
    assert hc.shape == hb.shape == (10, 4) and wc.shape == wb.shape == (12, 4)
    for h, w in ((hc, wc), (hb, wb)):
        np.testing.assert_allclose(h, hu, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(w, wu, rtol=1e-4, atol=1e-6)


def test_parse_linear_sizes():
    assert linear.parse_linear_sizes("8192x1024x65536, 4X3*5,2×1×2") == [(8192, 1024, 65536), (4, 3, 5), (2, 1, 2)]
    assert linear.parse_linear_sizes(" None ") == []
    for bad in ("", "8x4", "8x4x2x1", "ax4x8", "0x4x8", "8x0x8", "8x4x1"):
        with pytest.raises(ValueError):
            linear.parse_linear_sizes(bad)


@pytest.mark.parametrize(
    "argv", [["--linear", "12x3"], ["--linear-frameworks", "mxnet"], ["--linear-chunk", "0"],
             ["--linear-repeats", "0"], ["--only-linear"], ["--only-linear", "--linear", "none"]],
)
def test_bad_linear_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_linear_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(linear, "run", _fake_linear_run)
    out = tmp_path / "linear.json"
    assert linear.main(["64", "8", "32", "16", "--frameworks", "torch,jax", "--repeats", "2",
                        "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("torch N=64 H=8 V=32: peak 150 / 300 MiB = 0.50;")
    assert lines[1].startswith("jax N=64 H=8 V=32:")
    result = json.loads(out.read_text())
    assert result["settings"]["chunk"] == 16 and result["settings"]["repeats"] == 2
    for bad in (["8", "4"], ["8", "4", "16", "--frameworks", "mxnet"], ["8", "4", "16", "0"],
                ["8", "4", "16", "--repeats", "0"]):
        with pytest.raises(SystemExit) as exc:
            linear.main(bad)
        assert exc.value.code == 2


def _imported_modules(module) -> set[str]:
    """The modules that ``module``'s source imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
            if node.module in ("smoothloss", "smoothloss.bench"):  # from a package import its modules
                names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_imports_point_one_way():
    """cli -> dense_report -> dense -> dense_memory -> dense_steps, dense_report, dense -> schedule, checks,
    linear_report -> linear, and dense, dense_memory, linear, linear_report, schedule, checks -> common: no cycle; the harness uses smoothloss's public names only (and
    ``smoothloss._linear.default_chunk``, ``smoothloss.backends.torch_compiled``'s ``COMPILE_THRESHOLD``
    and ``COMPILED``, ``smoothloss.backends.tensorflow_compiled``'s ``XLA`` (its backward's traces),
    ``smoothloss.backends._base.without_run_time_checks`` (the run-time check's cost), and the drivers
    that ``python -m smoothloss check`` finds devices with)."""
    from smoothloss.bench import checks, dense_memory

    imports = {m: _imported_modules(m) for m in (cli, dense, dense_memory, dense_steps, dense_report, linear,
                                                 linear_report, common, schedule, checks, filtering)}

    def bench_modules(m):
        return {i for i in imports[m] if i.startswith("smoothloss.bench")}

    assert bench_modules(common) == bench_modules(dense_steps) == set()
    assert bench_modules(dense) == {"smoothloss.bench", "smoothloss.bench.common", "smoothloss.bench.dense_memory",
                                    "smoothloss.bench.dense_steps", "smoothloss.bench.schedule", "smoothloss.bench.checks"}
    assert bench_modules(dense_memory) == {"smoothloss.bench.common", "smoothloss.bench.dense_steps"}
    assert bench_modules(dense_report) == {"smoothloss.bench", "smoothloss.bench.common", "smoothloss.bench.dense",
                                           "smoothloss.bench.schedule", "smoothloss.bench.checks"}
    assert bench_modules(linear) == bench_modules(schedule) == bench_modules(checks) == {"smoothloss.bench.common"}
    assert bench_modules(filtering) == {"smoothloss.bench.common"}
    assert bench_modules(linear_report) == {"smoothloss.bench.common", "smoothloss.bench.linear"}
    assert bench_modules(cli) == {"smoothloss.bench", "smoothloss.bench.dense", "smoothloss.bench.dense_report",
                                  "smoothloss.bench.linear", "smoothloss.bench.linear_report", "smoothloss.bench.common",
                                  "smoothloss.bench.schedule", "smoothloss.bench.checks"}
    for m in imports:
        private = {i for i in imports[m] if i.startswith(("smoothloss._", "smoothloss.backends"))}
        # the compiled kernels' threshold and call count; the drivers' device discovery (as ``check``'s);
        # the switch that traces without the run-time checks
        assert private <= {"smoothloss._linear", "smoothloss.backends.torch_compiled",
                           "smoothloss.backends.tensorflow_compiled", "smoothloss.testing.drivers",
                           "smoothloss.backends._base"}, (m.__name__, private)
    # importing the package (``python -m smoothloss bench`` does) loads neither the harness nor a framework
    code = ("import sys, smoothloss.bench\n"
            "loaded = [m for m in sys.modules if m.startswith('smoothloss.bench.') or m in ('torch', 'jax', "
            "'tensorflow')]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_filtering_bench_measures_skips_and_errors(capsys):
    """The filtering benchmark on a small size: nothing skipped on Gaussian data, some blocks
    on the sorted vocabulary; the loss unchanged; the errors bounded by the threshold's
    scale; the table has one row per filter and data."""
    pytest.importorskip("torch")
    assert filtering.main(["--sizes", "512x16x1024", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in out if line.startswith("{")]
    by_data = {r["data"]: r for r in records}
    assert set(by_data) == {"gaussian", "sorted-vocab"}
    for r in records:
        assert set(r["seconds"]) == {"exact", "auto", "1e-5", "F.cross_entropy"}
        for f in r["filters"].values():
            assert f["loss_equal"] is True
            assert f["errors"]["d_hidden"]["max_abs"] <= 1e-3 * f["errors"]["d_hidden"]["max_abs_exact"] + f["eps"]
    assert by_data["gaussian"]["filters"]["1e-5"]["skipped_share"] == 0.0
    assert by_data["sorted-vocab"]["filters"]["1e-5"]["skipped_share"] > 0.1
    table = [line for line in out if line.startswith("| 512×16×1024")]
    assert len(table) == 4
