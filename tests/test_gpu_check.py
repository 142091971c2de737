"""tools/gpu-check: the prepared GPU run. Its argument parsing, its Markdown from fake
measurements, the refusal of --device cuda without CUDA, and one tiny real run on the CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu-check"

_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("gpu_check", gc)  # (dataclasses look their module up there)
_spec.loader.exec_module(gc)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


# --------------------------------------------------------------------------- arguments


def test_defaults_are_the_gpu_run(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    args = gc.parse_args([])
    assert args.device == "cuda"
    assert args.dense_sizes == [(8192, 128256), (1024, 32000)]
    assert args.lin_sizes == [(8192, 2048, 128256), (1024, 2048, 32000)]
    assert args.smoothing == [0.1, 0.0]
    assert (args.repeats, args.warmup, args.budget) == (20, 10, 420.0)
    assert args.check_frameworks == "torch,jax-jit"
    assert args.bench_frameworks == ("torch", "jax")
    assert args.out == "gpu-check.md"


def test_out_defaults_to_the_collected_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gc.parse_args([]).out == str(tmp_path / "gpu-check.md")
    assert gc.parse_args(["--out", "x.md"]).out == "x.md"
    assert gc.default_out({}) == "gpu-check.md"


def test_sizes_hidden_quick_and_smoothing():
    args = gc.parse_args(["--device", "cpu", "--sizes", "64x100,2×3", "--linear-sizes", "64x100,8x4x50", "--hidden", "32",
                          "--smoothing", "0.2", "--frameworks", "torch"])
    assert args.device == "cpu"
    assert args.dense_sizes == [(64, 100), (2, 3)]
    assert args.lin_sizes == [(64, 32, 100), (8, 4, 50)]
    assert args.smoothing == [0.2]
    assert args.bench_frameworks == ("torch",)
    quick = gc.parse_args(["--quick"])
    assert quick.dense_sizes == [(1024, 32000)] and quick.lin_sizes == [(256, 256, 8192)] and quick.repeats == 5
    none = gc.parse_args(["--sizes", "none", "--linear-sizes", "none"])
    assert none.dense_sizes == [] and none.lin_sizes == []


@pytest.mark.parametrize("argv", [
    ["--sizes", "64"], ["--sizes", "64xV"], ["--sizes", "0x10"], ["--sizes", "4x1"], ["--linear-sizes", "1x2x3x4"],
    ["--smoothing", "1.5"], ["--device", "tpu"], ["--frameworks", "tensorflow"], ["--repeats", "0"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


# --------------------------------------------------------------------------- Markdown


def _rows() -> list:
    size = "8192×128256"
    return [
        gc.Row("F.cross_entropy", size, 0.1, ms=12.345, ratio=1.0, mem_mib=4096.0, loss=12.25, loss_rel=1.5e-3,
               runs="20 + 10", reference=True),
        gc.Row("smoothloss.torch.cross_entropy", size, 0.1, ms=6.0, ratio=0.486, mem_mib=2048.4, loss=12.2531,
               loss_rel=0.0, grad_rel=3.1e-3, runs="20 + 10", ours=True),
        gc.Row("Liger LigerCrossEntropyLoss", size, 0.1, note="not installed (pip install liger-kernel)"),
        gc.Row("wrong | one", "1024×32000", 0.0, ms=0.1234, ratio=0.5, mem_mib=1.25, loss=13.0, loss_rel=0.5,
               grad_rel=0.03, runs="3 + 1"),
    ]


TABLE = """\
| implementation | size | ε | median ms | × reference | peak extra MiB | loss | loss rel diff | grad rel diff | runs |
|---|---|---:|---:|---:|---:|---:|---:|---:|---|
| F.cross_entropy | 8192×128256 | 0.1 | 12.3 | 1.00× | 4,096 | 12.25000 | 1.5e-03 | — | 20 + 10 |
| **smoothloss.torch.cross_entropy** | 8192×128256 | 0.1 | 6.00 | 0.49× | 2,048 | 12.25310 | 0.0e+00 | 3.1e-03 | 20 + 10 |
| Liger LigerCrossEntropyLoss | 8192×128256 | 0.1 | not installed (pip install liger-kernel) | — | — | — | — | — | — |
| wrong \\| one | 1024×32000 | 0 | 0.123 | 0.50× | 1.2 | 13.00000 | **5.0e-01 FAIL** | **3.0e-02 FAIL** | 3 + 1 |"""


def test_bench_table_exact():
    assert gc.bench_table(_rows()) == TABLE


def test_failures_count_as_documented():
    ref, ours, liger, wrong = _rows()
    assert not ref.failed() and not ours.failed() and not liger.failed()
    assert wrong.failed()  # a loss beyond the tolerance fails whoever computed it
    third_party_grad = gc.Row("Liger", "s", 0.1, ms=1.0, loss=1.0, loss_rel=1e-3, grad_rel=0.5)
    assert not third_party_grad.failed()  # shown as FAIL in its cell, but not ours
    assert gc.Row("ours", "s", 0.1, ms=1.0, loss=1.0, loss_rel=1e-3, grad_rel=0.5, ours=True).failed()
    assert gc.Row("ours", "s", 0.1, note="failed: RuntimeError: x", ours=True).failed()
    assert gc.Row("F", "s", 0.1, note="failed: RuntimeError: x", reference=True).failed()
    assert not gc.Row("Liger", "s", 0.1, note="failed: RuntimeError: x").failed()
    assert not gc.Row("ours", "s", 0.1, note="skipped: about 9.0 s per call, over the time budget", ours=True).failed()
    assert gc.Row("ours", "s", 0.1, ms=1.0, loss=float("nan"), ours=True).failed()


def test_render_markdown_exact():
    check = gc.CheckResult("python -m smoothloss check --device cpu --frameworks torch", 0, 4.25,
                           "table line 1\ntable line 2\n")
    sections = [("Dense", _rows()[:3]), ("Linear", [])]
    assert gc.overall_pass(check, sections)
    assert not gc.overall_pass(gc.CheckResult("c", 1, 1.0, "x"), sections)
    assert not gc.overall_pass(gc.CheckResult("c", None, 1.0, "", note="timed out after 9 s"), sections)
    assert not gc.overall_pass(check, [("Dense", _rows())])
    text = gc.render_markdown(["device: test", "date: today"], check, sections, passed=True)
    expected = "\n".join([
        "# smoothloss GPU check",
        "",
        "- device: test",
        "- date: today",
        "",
        "**Result: PASS**",
        "",
        "## Conformance: `python -m smoothloss check --device cpu --frameworks torch`",
        "",
        "PASS (exit status 0, 4.2 s)",
        "",
        "```text",
        "table line 1",
        "table line 2",
        "```",
        "",
        "## Dense",
        "",
        "\n".join(TABLE.splitlines()[:5]),
        "",
        "## Linear",
        "",
        "(no sizes)",
        "",
        gc.BENCH_LEGEND.format(tol=0.02),
        "",
    ])
    assert text == expected
    failed = gc.render_markdown([], gc.CheckResult("c", None, 240.0, "partial", note="timed out after 240 s"), [], False)
    assert "**Result: FAIL**" in failed and "FAIL (timed out after 240 s, 240.0 s)" in failed
    partial = gc.render_markdown([], None, [], None)
    assert "**Result: INCOMPLETE (the run was still going when this was written)**" in partial


def test_plan_calls_fits_the_budget():
    assert gc.plan_calls(0.001, 2, 10.0, 10, 20) == (10, 20)
    assert gc.plan_calls(1.0, 2, 10.0, 10, 20) == (1, 2)  # 3 calls fit: 1 warm-up, 2 timed
    assert gc.plan_calls(10.0, 2, 10.0, 10, 20) is None


def test_bench_case_guards_each_implementation():
    """A raising implementation gets its row's note, the others still run; nothing to run
    at all (every row not installed or skipped) gives the rows as they are."""
    import math

    def ok(loss):
        return gc.Impl(f"ok {loss}", prepare=lambda: None, run=lambda a: (loss, (None,)))

    def boom(a):
        raise RuntimeError("CUDA out of memory")

    ref = ok(2.0)
    ref.reference = True
    bad = gc.Impl("bad", prepare=lambda: None, run=boom, ours=True)
    rows = gc.bench_case([ref, bad, gc.Impl("absent", note="not installed (pip install x)"), ok(2.1)], "2×3", 0.1,
                         sync=lambda: None, memory=gc.Memory("cpu"), estimate=1e-4, seconds=5.0, warmup=2, repeats=3,
                         ref_loss=2.0, grad_diff=lambda g, r: None)
    assert [r.impl for r in rows] == ["ok 2.0", "bad", "absent", "ok 2.1"]
    assert rows[0].loss == 2.0 and rows[0].loss_rel == 0.0 and rows[0].ratio == 1.0 and rows[0].runs == "3 + 2"
    assert rows[1].note == "failed: RuntimeError: CUDA out of memory" and rows[1].failed()
    assert rows[2].note == "not installed (pip install x)" and not rows[2].failed()
    assert math.isclose(rows[3].loss_rel, 0.05) and rows[3].failed()  # a wrong loss is a failure
    none = gc.bench_case([gc.Impl("absent", note="skipped: x")], "2×3", 0.1, sync=lambda: None, memory=gc.Memory("cpu"),
                         estimate=1.0, seconds=1.0, warmup=1, repeats=1, ref_loss=None, grad_diff=lambda g, r: None)
    assert [(r.impl, r.note) for r in none] == [("absent", "skipped: x")]


def test_estimate_call_probes_small_row_counts_first():
    seen = []
    assert gc.estimate_call(seen.append, 64, 100, lambda: None) >= 0
    assert seen == [64, 64]  # small: the whole call, twice (the second is timed)
    seen.clear()
    gc.estimate_call(seen.append, 8192, 128256, lambda: None)
    assert seen == [1, 1, 4, 4, 16, 16, 64, 64, 256, 256]  # instant calls: up to a 32nd of the rows


# --------------------------------------------------------------------------- the command


def test_cuda_is_refused_without_a_cuda_device(tmp_path):
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path)), timeout=120, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "--device cuda asked, but torch.cuda.is_available() is False" in out.stderr
    assert out.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing was run, nothing written


@pytest.mark.slow
def test_tiny_cpu_run(tmp_path):
    """The whole command on the CPU at tiny sizes, from another directory, with smoothloss
    reached only through the wrapper's PYTHONPATH."""
    report = tmp_path / "out" / "report.md"
    argv = [str(SCRIPT), "--device", "cpu", "--sizes", "64x100", "--linear-sizes", "64x32x100",
            "--check-frameworks", "torch", "--repeats", "3", "--warmup", "1", "--out", str(report)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=240, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = report.read_text(encoding="utf-8")
    assert text == out.stdout.rstrip("\n") + "\n" or text.rstrip("\n") == out.stdout.rstrip("\n")
    assert "**Result: PASS**" in text
    assert "- warnings: none" in text  # (smoothloss compiled its kernels: no fallback warning)
    assert f"(from {ROOT / 'smoothloss'})" in text
    assert "PASS (exit status 0," in text and "torch                cpu     bfloat16" in text
    for eps in ("0.1", "0"):
        for name in ("F.cross_entropy", "**smoothloss.torch.cross_entropy**"):
            assert f"| {name} | 64×100 | {eps} | " in text
        for name in ("F.cross_entropy(h @ W.T)", "**smoothloss.torch.linear_cross_entropy**"):
            assert f"| {name} | 64×32×100 | {eps} | " in text
    liger = "not installed (pip install liger-kernel)" if not _installed("liger_kernel") else "n/a: Liger's Triton kernels need CUDA"
    cce = "not installed (pip install cut-cross-entropy)" if not _installed("cut_cross_entropy") else None
    assert f"| Liger LigerCrossEntropyLoss | 64×100 | 0.1 | {liger} |" in text
    assert f"| Liger LigerFusedLinearCrossEntropyLoss | 64×32×100 | 0 | {liger} |" in text
    if cce is not None:
        assert f"| CCE linear_cross_entropy | 64×32×100 | 0 | {cce} |" in text
    else:
        assert "| CCE linear_cross_entropy | 64×32×100 | 0 | n/a: CCE's Triton kernels need CUDA |" in text
    if _installed("jax") and _installed("optax"):
        assert "| optax.softmax_cross_entropy | 64×100 | 0.1 | " in text
        assert "| **smoothloss.jax.softmax_cross_entropy_with_integer_labels** | 64×100 | 0 | " in text
    else:
        assert "not installed (pip install" in text.split("## Dense loss, JAX")[1]
    tables = text.split("```")[-1]  # after the check's output
    assert "FAIL" not in tables.replace("FAIL above", "")
    assert "failed:" not in tables and "skipped:" not in tables
