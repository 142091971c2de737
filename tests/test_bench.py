"""`python -m smoothloss bench`: one ``--quick`` run on the installed frameworks, checked
for structure (JSON, Markdown rows, plot), never for speed: performance claims belong in
the benchmark's output, not in unit tests."""

from __future__ import annotations

import importlib.util
import json

import pytest

from smoothloss import _bench as bench

INSTALLED = [f for f in bench.FRAMEWORKS if bench.installed(f)]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick benchmark of every installed framework (the slow part, run once)."""
    if not INSTALLED:
        pytest.skip("none of torch, jax+optax, tensorflow+keras is installed")
    out = tmp_path_factory.mktemp("bench")
    docs = out / "docs" / "benchmarks.md"
    rc = bench.main(["--quick", "--out", str(out), "--frameworks", ",".join(INSTALLED),
                     "--docs", str(docs), "--note", "test run"])
    report = json.loads((out / "bench.json").read_text())
    return rc, out, docs, report


def test_quick_run_succeeds_and_records_the_machine(quick_run):
    rc, out, _, report = quick_run
    assert rc == 0, json.dumps(report, indent=1)[:4000]
    assert report["schema"] == bench.SCHEMA
    machine = report["machine"]
    for key in ("cpu_count", "platform", "python", "versions", "cpu_model"):
        assert key in machine
    assert machine["cpu_count"] >= 1
    for fw in INSTALLED:
        assert machine["versions"][fw] is not None
    assert report["settings"]["quick"] is True
    assert report["settings"]["sizes"] == [list(s) for s in bench.QUICK_SIZES]
    assert report["command"].startswith("python -m smoothloss bench --quick")
    assert set(report["frameworks"]) == set(INSTALLED)


@pytest.mark.parametrize("fw", bench.FRAMEWORKS)
def test_every_implementation_has_positive_timings(quick_run, fw):
    if fw not in INSTALLED:
        pytest.skip(f"{fw} is not installed")
    _, _, _, report = quick_run
    res = report["frameworks"][fw]
    assert "error" not in res, res.get("error")
    repeats = report["settings"]["repeats"]
    assert [e["size"] for e in res["sizes"]] == [list(s) for s in bench.QUICK_SIZES]
    for entry in res["sizes"] + [res["dispatch"]]:
        assert set(entry["results"]) == {i.key for i in bench.IMPLS[fw]}
        for key, rec in entry["results"].items():
            assert "error" not in rec, (key, rec["error"])
            assert rec["median_ms"] > 0
            assert 0 < rec["min_ms"] <= rec["q1_ms"] <= rec["median_ms"] <= rec["q3_ms"] <= rec["max_ms"]
            assert len(rec["samples_ms"]) == repeats
            assert rec["inner"] >= 1
            if bench._impl(fw, key).smoothing:  # the same loss as smoothloss: like is compared with like
                assert rec["matches_smoothloss"], (key, rec["loss"], entry["results"]["smoothloss"]["loss"])
    assert res["dispatch"]["size"] == list(bench.TINY)
    for m in res["memory"]:  # quick mode: measured in-process, if the platform can reset the peak
        assert m["logits_mib"] > 0
        assert m.get("extra_mib") is None or m["extra_mib"] >= 0


def test_summary_has_ratios_for_every_framework_and_size(quick_run):
    _, _, _, report = quick_run
    rows = {(r["framework"], tuple(r["size"])) for r in report["summary"]["ratios"]}
    assert rows == {(fw, s) for fw in INSTALLED for s in bench.QUICK_SIZES}
    for r in report["summary"]["ratios"]:
        assert r["vs_fastest"] > 0 and r["vs_main"] > 0
        assert r["fastest_builtin"] in {i.key for i in bench.IMPLS[r["framework"]] if i.builtin}
    assert {d["framework"] for d in report["summary"]["dispatch"]} == set(INSTALLED)


def test_markdown_has_a_row_per_implementation(quick_run):
    _, out, _, report = quick_run
    md = (out / "bench.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for fw in INSTALLED:
        for impl in bench.IMPLS[fw]:
            for size in bench.QUICK_SIZES:
                prefix = f"| {fw} | {bench.size_name(size)} ("
                assert any(r.startswith(prefix) and f"| {impl.label} |" in r for r in rows), (fw, size, impl.label)
    assert "NO smoothing" in md or "tensorflow" not in INSTALLED


def test_docs_page_names_the_machine_and_the_command(quick_run):
    _, _, docs, report = quick_run
    text = docs.read_text()
    assert report["command"] in text
    assert report["machine"]["cpu_model"] in text
    assert "test run" in text
    assert report["markdown"] in text


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
    assert bench.parse_sizes("4096x10,1024X32000, 8×5,2*3") == [(4096, 10), (1024, 32000), (8, 5), (2, 3)]
    for bad in ("", "4096", "ax10", "0x10", "4x1", "4x-3"):
        with pytest.raises(ValueError):
            bench.parse_sizes(bad)


@pytest.mark.parametrize(
    "argv", [["--sizes", "12"], ["--frameworks", "mxnet"], ["--repeats", "0"], ["--smoothing", "1.5"],
             ["--threads", "0"]],
)
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2


def _fake_report() -> dict:
    """A hand-made report: targets computed from known medians, no framework needed."""

    def rec(med):
        return {"median_ms": med, "min_ms": med, "max_ms": med, "q1_ms": med, "q3_ms": med,
                "samples_ms": [med], "inner": 1}

    sizes = [{"size": [1024, 32000], "results": {"smoothloss": rec(100.0), "F.cross_entropy": rec(300.0),
                                                 "timm": rec(150.0)}},
             {"size": [4096, 1000], "results": {"smoothloss": rec(30.0), "F.cross_entropy": rec(40.0),
                                                "timm": rec(20.0)}}]
    memory = [{"implementation": "smoothloss", "size": [1024, 32000], "extra_mib": 125.0, "extra_over_logits": 1.0,
               "logits_mib": 125.0},
              {"implementation": "F.cross_entropy", "size": [1024, 32000], "extra_mib": 375.0,
               "extra_over_logits": 3.0, "logits_mib": 125.0}]
    dispatch = {"size": [32, 10], "mode": "torch eager",
                "results": {"smoothloss": rec(0.2), "F.cross_entropy": rec(0.1), "timm": rec(0.1)}}
    frameworks = {"torch": {"sizes": sizes, "memory": memory, "dispatch": dispatch}}
    return {"frameworks": frameworks, "settings": {"smoothing": 0.1}}


def test_summary_targets_from_known_numbers():
    report = _fake_report()
    summary = bench._summarise(report["frameworks"], [(1024, 32000), (4096, 1000)])
    got = {(t["target"], t["where"]): (round(t["value"], 3), t["met"]) for t in summary["targets"]}
    assert got[("smoothloss ≤ 1.0× the fastest built-in", "torch 1024×32000 (vs timm)")] == (0.667, True)
    assert got[("smoothloss ≤ 0.5× the built-in at 1024×32000", "torch 1024×32000 (vs F.cross_entropy)")] == (0.333, True)
    assert got[("smoothloss ≤ 1.0× the fastest built-in", "torch 4096×1000 (vs timm)")] == (1.5, False)
    assert got[("torch 4096×1000: smoothloss ≤ 0.5× F.cross_entropy", "torch 4096×1000")] == (0.75, False)
    assert got[("extra memory ≤ gradient (= logits) + O(B)", "torch 1024×32000")] == (125.0, True)
    assert got[("extra memory ≤ the built-in's", "torch 1024×32000 (vs F.cross_entropy)")] == (125.0, True)
    assert got[("tiny batch 32×10 dispatch ≤ 1.5× the built-in", "torch eager (vs F.cross_entropy)")] == (2.0, False)
    report["summary"] = summary
    md = bench.markdown_tables(report)
    assert "| torch | 1024×32000 (125.00) | torch F.cross_entropy(label_smoothing) | 300 |" in md
    assert "0.33×" in md and "**no**" in md
