"""The compiled path: the core's closed form compiled by torch.compile (Inductor).

Every option set of the conformance grid, with class indices and with probabilities,
runs through the compiled kernels and through the eager ones; both are compared with
each other (float64: 1e-10, float32: 1e-5 relative) and with the independent float64
reference. The other tests pin the switch, the size threshold, the fallback when
compiling fails, and that a graph serves every batch size and smoothing value.

Graphs are shared across the module (one per dtype and option structure), which keeps
its compile time to a few dozen graphs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import smoothloss
from smoothloss import _core
from smoothloss.testing import reference_cross_entropy, reference_linear_cross_entropy, rel_err, tolerance
from smoothloss.testing.cases import LINEAR_COMPILED_OPTIONS, Case, compiled_cases, linear_compiled_problem

torch = pytest.importorskip("torch")
binding = pytest.importorskip("smoothloss.backends.torch_compiled")

# pytest -n auto (README): compiled graphs are cached per process: one worker compiles each once
pytestmark = pytest.mark.xdist_group("compiled")


@pytest.fixture
def device(driver_for):
    driver = driver_for("torch")
    if driver.device_name.startswith("cuda"):
        pytest.importorskip("triton")
    return driver.device_name


CASES = compiled_cases()


def _tensors(case: Case, device: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    logits, targets, opts = case.make()
    dtype = getattr(torch, case.dtype)
    x = torch.tensor(logits, dtype=dtype, device=device, requires_grad=True)
    floating = case.targets == "prob"
    t = torch.tensor(targets, dtype=dtype if floating else torch.int64, device=device, requires_grad=floating)
    opts = dict(opts)
    if "weight" in opts:
        opts["weight"] = torch.tensor(opts["weight"], dtype=dtype, device=device, requires_grad=True)
    return x, t, opts


def _loss_and_grads(x, t, opts):
    loss = smoothloss.cross_entropy(x, t, **opts)
    inputs = [a for a in (x, t, opts.get("weight")) if a is not None and a.requires_grad]
    # a non-uniform cotangent for "none", so that each position's gradient is weighed
    cot = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    grads = torch.autograd.grad(loss, inputs, cot)
    return [loss.detach(), *grads], cot


def _numpy(a):
    return a.detach().cpu().double().numpy()


def _labels(y):
    return y.cpu().numpy()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_compiled_matches_eager_and_reference(case, mode, device):
    x, t, opts = _tensors(case, device)
    mode("never")
    eager, cot = _loss_and_grads(x, t, opts)
    mode("always")
    calls = binding.COMPILED.calls
    compiled, _ = _loss_and_grads(x, t, opts)
    assert binding.COMPILED.broken is None
    assert binding.COMPILED.calls == calls + 2  # the forward and the backward graph ran
    tol = tolerance(case.dtype)
    for c, e in zip(compiled, eager):
        assert c.dtype == e.dtype and c.shape == e.shape and c.device == e.device
        assert rel_err(_numpy(c), _numpy(e)) <= tol
    # and the loss and the logits' gradient against the float64 reference
    logits, targets, ref_opts = case.make()
    ref_loss, ref_grad = reference_cross_entropy(logits, targets, **ref_opts)
    assert rel_err(_numpy(compiled[0]), ref_loss) <= tol
    if opts.get("reduction") != "none":
        assert rel_err(_numpy(compiled[1]), ref_grad * float(cot)) <= tol


WEIGHTED = [c for c in CASES if c.targets == "int" and "weight" in dict(c.make()[2])]


@pytest.mark.parametrize("case", WEIGHTED, ids=[c.id for c in WEIGHTED])
def test_compiled_gradient_from_the_forward_exponentials_with_a_fixed_weight(case, mode, device):
    """Integer labels whose only differentiable input is the logits (here: a weight that
    needs no gradient) take the function whose forward keeps exp(x - m) and whose
    backward makes the gradient in its place: the loss and gradient against the float64
    reference (a non-uniform cotangent for "none"), and against the eager kernels."""
    x, t, opts = _tensors(case, device)
    opts["weight"] = opts["weight"].detach()
    mode("always")
    loss = smoothloss.cross_entropy(x, t, **opts)
    kept = binding.COMPILED.keeps_exp(x, t, _core.validate(binding.FW, x, t, opts["weight"], **{
        k: v for k, v in opts.items() if k != "weight"}))
    assert type(loss.grad_fn).__name__ == ("_ExpKeptCrossEntropyFunctionBackward" if kept else
                                           "CrossEntropyFunctionBackward")
    cot = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    (g,) = torch.autograd.grad(loss, x, cot)
    mode("never")
    eager, _ = _loss_and_grads(x, t, opts)
    tol = tolerance(case.dtype)
    assert rel_err(_numpy(loss), _numpy(eager[0])) <= tol and rel_err(_numpy(g), _numpy(eager[1])) <= tol
    logits, targets, ref_opts = case.make()
    ref_loss, ref_grad = reference_cross_entropy(logits, targets, **ref_opts)
    assert rel_err(_numpy(loss), ref_loss) <= tol
    if opts.get("reduction") != "none":
        assert rel_err(_numpy(g), ref_grad * float(cot)) <= tol


def test_compiled_gradient_from_the_forward_exponentials_twice_and_again(mode, device):
    """The function that keeps the forward's exponentials: the first backward makes the
    gradient in their place; a second backward of a retained graph, and a backward with
    create_graph, recompute it from the saved inputs (the same values), and the logits
    changed in place after the forward are refused as for any saved input."""
    mode("always")
    gen = torch.Generator(device=device).manual_seed(7)
    x = torch.randn(6, 9, dtype=torch.float64, device=device, generator=gen, requires_grad=True)
    y = torch.tensor([0, 8, 3, 3, 1, 5], device=device)
    ref_loss, ref_grad = reference_cross_entropy(_numpy(x), _labels(y), label_smoothing=0.2, z_loss=1e-3)

    def loss_of(x):
        return smoothloss.cross_entropy(x, y, label_smoothing=0.2, z_loss=1e-3)

    loss = loss_of(x)
    assert type(loss.grad_fn).__name__ == "_ExpKeptCrossEntropyFunctionBackward"
    calls = binding.COMPILED.calls
    (g1,) = torch.autograd.grad(2.0 * loss, x, retain_graph=True)  # from the exponentials
    assert binding.COMPILED.calls == calls + 1
    (g2,) = torch.autograd.grad(loss, x, retain_graph=True)  # recomputed: the exponentials are spent
    (g3,) = torch.autograd.grad(loss, x, create_graph=True)
    assert rel_err(_numpy(loss), ref_loss) <= 1e-10
    assert rel_err(_numpy(g1), 2.0 * ref_grad) <= 1e-10
    for g in (g2, g3):
        assert rel_err(_numpy(g), ref_grad) <= 1e-10
    assert g3.requires_grad and torch.autograd.gradgradcheck(loss_of, (x,))
    # a create_graph backward first: recomputed, and the exponentials are left unused
    (h,) = torch.autograd.grad(loss_of(x), x, create_graph=True)
    assert rel_err(_numpy(h), ref_grad) <= 1e-10
    z = x.detach().clone().requires_grad_()
    w = z * 1.0
    loss = loss_of(w)
    with torch.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def _graph_count() -> int:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return sum(len(_debug_get_cache_entry_list(f.__code__)) for f in binding.GRAPH_FUNCTIONS)


def test_one_graph_serves_every_batch_size_class_count_and_value(mode, device):
    from torch._dynamo.symbolic_convert import TensorifyState

    # Dynamo remembers, for the whole process, the symbolic floats some earlier graph had
    # to specialise (by name, e.g. the first float input) and specialises them in every
    # later graph, and a graph compiled under that rule stays cached: other tests' graphs
    # in this process (pytest-xdist puts other files' tests in it too) must not decide
    # this one's, so the caches start empty
    torch._dynamo.reset()
    TensorifyState.clear()
    mode("always")
    graphs = []
    for B, K, eps, z in [(16, 5, 0.1, 1e-3), (33, 5, 0.3, 2e-3), (7, 12, 0.05, 1e-4), (40, 9, 0.2, 1e-2)]:
        x = torch.randn(B, K, dtype=torch.float64, device=device, requires_grad=True)
        y = torch.randint(0, K, (B,), device=device)
        loss = smoothloss.cross_entropy(x, y, label_smoothing=eps, z_loss=z, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        graphs.append(_graph_count())
        ref_loss, ref_grad = reference_cross_entropy(
            _numpy(x), _labels(y), label_smoothing=eps, z_loss=z, reduction="sum"
        )
        assert rel_err(_numpy(loss), ref_loss) <= 1e-10
        assert rel_err(_numpy(g), ref_grad) <= 1e-10
    assert graphs[1:] == graphs[:-1]  # no graph was compiled after the first call


def test_auto_compiles_at_the_threshold_only(mode, device, monkeypatch):
    mode("auto")
    monkeypatch.setattr(binding, "COMPILE_THRESHOLD", 64)
    monkeypatch.setattr(binding, "WARMUP_CALLS", 0)
    monkeypatch.setattr(binding, "_SEEN", {})
    x = torch.randn(4, 10, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4], device=device)
    calls = binding.COMPILED.calls
    smoothloss.cross_entropy(x[:3], y[:3], label_smoothing=0.1).backward()  # 30 logits: eager
    assert binding.COMPILED.calls == calls
    smoothloss.cross_entropy(x, y, label_smoothing=0.1).backward()  # 40 logits
    assert binding.COMPILED.calls == calls
    monkeypatch.setattr(binding, "COMPILE_THRESHOLD", 40)
    smoothloss.cross_entropy(x, y, label_smoothing=0.1).backward()
    assert binding.COMPILED.calls == calls + 2
    mode("never")
    smoothloss.cross_entropy(x, y, label_smoothing=0.1).backward()
    assert binding.COMPILED.calls == calls + 2


def test_auto_compiles_a_signature_only_once_it_repeats(mode, device, monkeypatch):
    """Under "auto" a call signature's first WARMUP_CALLS calls run the eager kernels
    (a one-off call never compiles); the next ones run the compiled kernels. A new batch
    size or smoothing value is the same signature; a new dtype, target kind or weight is
    another, with its own warm-up. "always" compiles from the first call."""
    mode("auto")
    monkeypatch.setattr(binding, "COMPILE_THRESHOLD", 1)
    monkeypatch.setattr(binding, "WARMUP_CALLS", 3)
    monkeypatch.setattr(binding, "_SEEN", {})
    rng = np.random.default_rng(0)

    def step(n, eps, dtype=torch.float64, weight=None):
        x = torch.tensor(rng.normal(size=(n, 6)), dtype=dtype, device=device, requires_grad=True)
        y = torch.tensor(rng.integers(0, 6, n), device=device)
        before = binding.COMPILED.calls
        loss = smoothloss.cross_entropy(x, y, label_smoothing=eps, weight=weight)
        (g,) = torch.autograd.grad(loss, x)
        ref_loss, ref_grad = reference_cross_entropy(
            x.detach().double().cpu().numpy(), _labels(y), label_smoothing=eps,
            weight=None if weight is None else _numpy(weight),
        )
        tol = tolerance(str(dtype).split(".")[-1])
        assert rel_err(_numpy(loss), ref_loss) <= tol and rel_err(_numpy(g), ref_grad) <= tol
        return binding.COMPILED.calls - before

    assert [step(5 + i, 0.1 * (i + 1)) for i in range(3)] == [0, 0, 0]  # eager: warming up
    assert step(9, 0.35) == 2 and step(4, 0.05) == 2  # the signature repeats: compiled (forward, backward)
    assert step(5, 0.1, dtype=torch.float32) == 0  # another dtype: its own warm-up
    assert step(5, 0.1, weight=torch.ones(6, dtype=torch.float64, device=device)) == 0
    mode("always")
    assert step(5, 0.1, dtype=torch.float32) == 2


def test_a_first_call_in_a_fresh_process_does_not_compile(tmp_path):
    """A fresh process, an empty Inductor cache, the default mode: the first eager call at
    4096x1000 runs the eager kernels (no compile), and gives the float64 reference's loss."""
    import json
    import subprocess
    import sys

    code = (
        "import json, time, torch, numpy as np, smoothloss\n"
        "from smoothloss.backends import torch_compiled\n"
        "rng = np.random.default_rng(0)\n"
        "x = torch.tensor(rng.normal(size=(4096, 1000)).astype(np.float32), requires_grad=True)\n"
        "y = torch.tensor(rng.integers(0, 1000, 4096))\n"
        "t0 = time.perf_counter()\n"
        "loss = smoothloss.cross_entropy(x, y, label_smoothing=0.1)\n"
        "loss.backward()\n"
        "print(json.dumps({'s': time.perf_counter() - t0, 'loss': loss.item(), 'calls': torch_compiled.COMPILED.calls,"
        " 'inductor': 'torch._inductor.compile_fx' in __import__('sys').modules}))\n"
    )
    env = {**__import__("os").environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "SMOOTHLOSS_COMPILE": "auto"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["calls"] == 0 and not result["inductor"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 1000)).astype(np.float32).astype(np.float64)
    ref_loss, _ = reference_cross_entropy(x, rng.integers(0, 1000, 4096), label_smoothing=0.1)
    assert rel_err(result["loss"], ref_loss) <= tolerance("float32")


def test_a_missing_cpp_compiler_is_found_before_compiling(mode, monkeypatch):
    """No C++ compiler on the PATH: the first call that would compile warns at once
    (nothing is traced or built), and the eager kernels give the right numbers."""
    mode("always")
    monkeypatch.setattr(binding.COMPILED, "graphs", {})
    monkeypatch.setattr(binding.COMPILED, "broken", None)
    monkeypatch.setattr(binding.COMPILED, "cxx_checked", False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    traced = []
    monkeypatch.setattr(binding.COMPILED, "graph", lambda name, fn: traced.append(name))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1])
    with pytest.warns(RuntimeWarning, match=r"could not compile.*no C\+\+ compiler found"):
        loss = smoothloss.cross_entropy(x, y, label_smoothing=0.2)
    (g,) = torch.autograd.grad(loss, x)
    assert traced == [] and "no C++ compiler found" in binding.COMPILED.broken
    ref_loss, ref_grad = reference_cross_entropy(_numpy(x), _labels(y), label_smoothing=0.2)
    assert rel_err(_numpy(loss), ref_loss) <= 1e-12 and rel_err(_numpy(g), ref_grad) <= 1e-12


def test_inference_runs_the_compiled_forward(mode, device):
    mode("always")
    x = torch.randn(6, 4, dtype=torch.float64, device=device)
    y = torch.tensor([0, 1, 2, 3, 0, 1], device=device)
    calls = binding.COMPILED.calls
    with torch.no_grad():
        loss = smoothloss.cross_entropy(x, y, label_smoothing=0.1)
    assert binding.COMPILED.calls == calls + 1
    ref, _ = reference_cross_entropy(_numpy(x), _labels(y), label_smoothing=0.1)
    assert rel_err(_numpy(loss), ref) <= 1e-10


def test_a_failed_compile_warns_once_and_runs_eager(mode, device, monkeypatch):
    mode("always")
    monkeypatch.setattr(binding.COMPILED, "graphs", {})
    monkeypatch.setattr(binding.COMPILED, "broken", None)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    x = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1], device=device)
    ref_loss, ref_grad = reference_cross_entropy(_numpy(x), _labels(y), label_smoothing=0.2)
    with pytest.warns(RuntimeWarning, match=r"could not compile.*no C\+\+ compiler found\).*SMOOTHLOSS_COMPILE=never"):
        loss = smoothloss.cross_entropy(x, y, label_smoothing=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        (g,) = torch.autograd.grad(loss, x)
        again = smoothloss.cross_entropy(x, y, label_smoothing=0.2)
    assert "no C++ compiler found" in binding.COMPILED.broken
    for value in (loss, again):
        assert rel_err(_numpy(value), ref_loss) <= 1e-10
    assert rel_err(_numpy(g), ref_grad) <= 1e-10


def test_inside_a_callers_compile_region_the_loss_is_traced_inline(mode, device):
    mode("always")
    x = torch.randn(8, 6, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(0, 6, (8,), device=device)

    def step(x, y):
        return smoothloss.cross_entropy(x * 2.0, y, label_smoothing=0.1)

    calls = binding.COMPILED.calls
    loss = torch.compile(step, backend="aot_eager", fullgraph=True)(x, y)
    (g,) = torch.autograd.grad(loss, x)
    assert binding.COMPILED.calls == calls  # no compiled call of smoothloss's own
    ref_loss, ref_grad = reference_cross_entropy(_numpy(x) * 2.0, _labels(y), label_smoothing=0.1)
    assert rel_err(_numpy(loss), ref_loss) <= 1e-10
    assert rel_err(_numpy(g), 2.0 * ref_grad) <= 1e-10


def test_torch_func_and_double_backward_run_eager_under_always(mode, device):
    mode("always")
    x = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0], device=device)
    calls = binding.COMPILED.calls
    g = torch.func.grad(lambda x: smoothloss.cross_entropy(x, y, label_smoothing=0.1))(x.detach())
    assert binding.COMPILED.calls == calls
    ref_loss, ref_grad = reference_cross_entropy(_numpy(x), _labels(y), label_smoothing=0.1)
    assert rel_err(_numpy(g), ref_grad) <= 1e-10
    # double backward: the first backward is compiled only without create_graph
    loss = smoothloss.cross_entropy(x, y, label_smoothing=0.1)
    (g1,) = torch.autograd.grad(loss, x, create_graph=True)
    assert rel_err(_numpy(g1), ref_grad) <= 1e-10
    assert torch.autograd.gradgradcheck(lambda x: smoothloss.cross_entropy(x, y, label_smoothing=0.1), (x,))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_compiled_16_bit_logits(dtype, mode, device):
    mode("always")
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(12, 9))
    y = torch.tensor(rng.integers(0, 9, 12), device=device)
    x = torch.tensor(logits, dtype=getattr(torch, dtype), device=device, requires_grad=True)
    loss = smoothloss.cross_entropy(x, y, label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, x)
    assert loss.dtype == torch.float32 and g.dtype == x.dtype
    ref_loss, ref_grad = reference_cross_entropy(_numpy(x), _labels(y), label_smoothing=0.1)
    assert rel_err(_numpy(loss), ref_loss) <= 1e-6  # sums in float32, from the rounded logits
    assert rel_err(_numpy(g), ref_grad) <= 2e-2  # the gradient is rounded to the 16-bit dtype


@pytest.mark.parametrize("hostile", ["offset", "spread", "masked-class", "weight-and-ignore"])
def test_compiled_float32_on_hostile_inputs(hostile, mode, device):
    """The compiled float32 kernels (exp taken as exp2 of a product on the CPU) on logits
    with a common offset of 10⁴, rows spanning 200 nats, a -inf masked class, and a class
    weight with ignored positions: the float64 reference's loss and gradient."""
    mode("always")
    rng = np.random.default_rng(12)
    x = rng.normal(scale=2.0, size=(16, 37)).astype(np.float32)
    y = rng.integers(0, 37, 16)
    y[y == 5] = 6
    options = {"label_smoothing": 0.1}
    if hostile == "offset":
        x = x + np.float32(1e4)
    elif hostile == "spread":  # each row from -200 to +20 around its label's logit
        x = x + np.linspace(-200.0, 20.0, 37, dtype=np.float32)
    elif hostile == "weight-and-ignore":
        options.update(weight=rng.uniform(0.5, 2.0, 37).astype(np.float32), ignore_index=int(y[3]))
    else:
        x[:, 5] = -np.inf  # no label is 5: the reference drops the class, whose p is 0
        options = {}
    if hostile == "masked-class":
        kept = [c for c in range(37) if c != 5]
        ref_loss, g = reference_cross_entropy(x[:, kept], np.where(y > 5, y - 1, y))
        ref_grad = np.insert(g, 5, 0.0, axis=1)
    else:
        ref_loss, ref_grad = reference_cross_entropy(x, y, **options)
    given = {k: torch.tensor(v, device=device) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    xt = torch.tensor(x, device=device, requires_grad=True)
    calls = binding.COMPILED.calls
    loss = smoothloss.cross_entropy(xt, torch.tensor(y, device=device), **given)
    (g,) = torch.autograd.grad(loss, xt)
    assert binding.COMPILED.calls == calls + 2
    assert torch.isfinite(loss) and rel_err(_numpy(loss), ref_loss) <= 1e-5
    assert bool(torch.isfinite(g).all()) and rel_err(_numpy(g), ref_grad) <= 1e-5


def test_compiled_nan_logit_gives_nan_row(mode, device):
    """A NaN logit makes its position's loss and gradient row NaN, and no other."""
    mode("always")
    x = torch.randn(4, 9, device=device)
    x[2, 3] = float("nan")
    x.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3], device=device)
    loss = smoothloss.cross_entropy(x, y, label_smoothing=0.1, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isnan(loss[2]) and bool(torch.isfinite(loss[[0, 1, 3]]).all())
    assert bool(torch.isnan(g[2]).all()) and bool(torch.isfinite(g[[0, 1, 3]]).all())


def test_switch_rejects_unknown_modes(monkeypatch):
    with pytest.raises(ValueError, match="compile mode must be one of 'auto', 'always', 'never', got 'on'"):
        smoothloss.set_compile_mode("on")
    from smoothloss.backends import _base

    monkeypatch.setitem(_base._COMPILE, "mode", "yes")
    with pytest.raises(ValueError, match="SMOOTHLOSS_COMPILE must be one of"):
        smoothloss.compile_mode()


def test_environment_variable_sets_the_starting_mode():
    import subprocess
    import sys

    code = "import smoothloss; print(smoothloss.compile_mode())"
    env = {**__import__("os").environ, "SMOOTHLOSS_COMPILE": "never"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "never"


# The chunked linear loss and the mixup loss run the same compiled kernels on each chunk
# and on each target: the chunk step's graphs are the dense loss's with reduction="none".
# A chunk's forward and gradient together ("mean"/"sum" without softcap) run on the eager
# kernels in the logits' place (docs/transforms.md's path table), compiled mode or not.
@pytest.mark.parametrize("name", list(LINEAR_COMPILED_OPTIONS))
def test_linear_chunks_run_the_compiled_kernels(name, mode, device):
    options = LINEAR_COMPILED_OPTIONS[name]
    compiled_calls = 6 if options.get("reduction") == "none" or options.get("softcap") else 0
    h_np, W_np, b_np, y_np = linear_compiled_problem()
    y = torch.tensor(y_np, device=device)
    results = {}
    for m in ("never", "always"):
        mode(m)
        h, W, b = (torch.tensor(a, device=device, requires_grad=True) for a in (h_np, W_np, b_np))
        calls = binding.COMPILED.calls
        loss = smoothloss.linear_cross_entropy(h, W, y, bias=b, chunk_size=4, **options)
        (loss.sum() if loss.ndim else loss).backward()
        # 3 chunks: for "none" each runs the forward graph in the forward pass and the
        # backward graph in the backward pass
        assert binding.COMPILED.calls - calls == (compiled_calls if m == "always" else 0)
        results[m] = [_numpy(a) for a in (loss, h.grad, W.grad, b.grad)]
    assert binding.COMPILED.broken is None
    ref = reference_linear_cross_entropy(h_np, W_np, b_np, y_np, **options)
    for c, e, r in zip(results["always"], results["never"], ref):
        assert rel_err(c, e) <= 1e-10
        assert rel_err(c, r) <= 1e-10


def test_linear_and_grad_in_place_and_the_closed_form_pair_run_compiled(mode, device):
    mode("always")
    rng = np.random.default_rng(12)
    h_np, W_np, y_np = rng.normal(size=(7, 5)), rng.normal(size=(8, 5)), rng.integers(0, 8, 7)
    h, W, y = (torch.tensor(a, device=device) for a in (h_np, W_np, y_np))
    calls = binding.COMPILED.calls
    loss, (dh, dW, db) = smoothloss.linear_cross_entropy_and_grad(h, W, y, chunk_size=3, label_smoothing=0.1)
    assert binding.COMPILED.calls - calls == 0 and db is None  # each chunk's gradient in its logits' place
    ref = reference_linear_cross_entropy(h_np, W_np, np.zeros(8), y_np, label_smoothing=0.1)
    for c, r in zip((loss, dh, dW), ref):
        assert rel_err(_numpy(c), r) <= 1e-10
    calls = binding.COMPILED.calls
    x_np = rng.normal(size=(6, 4))
    loss, g = smoothloss.cross_entropy_and_grad(torch.tensor(x_np, device=device), torch.tensor(y_np[:6] % 4,
                                                device=device), label_smoothing=0.1)
    assert binding.COMPILED.calls - calls == 2
    ref_loss, ref_grad = reference_cross_entropy(x_np, y_np[:6] % 4, label_smoothing=0.1)
    assert rel_err(_numpy(loss), ref_loss) <= 1e-10 and rel_err(_numpy(g), ref_grad) <= 1e-10


def test_mixup_cross_entropy_runs_the_compiled_kernels(mode, device):
    rng = np.random.default_rng(13)
    x_np, y_np = rng.normal(size=(6, 5)), rng.integers(0, 5, 6)
    y = torch.tensor(y_np, device=device)
    results = {}
    for m in ("never", "always"):
        mode(m)
        x = torch.tensor(x_np, device=device, requires_grad=True)
        calls = binding.COMPILED.calls
        loss = smoothloss.mixup_cross_entropy(x, y, lam=0.7, label_smoothing=0.1)
        loss.backward()
        assert binding.COMPILED.calls - calls == (4 if m == "always" else 0)  # own and partner: forward + backward
        results[m] = (_numpy(loss), _numpy(x.grad))
    # the mixed target's loss, from the float64 reference on the dense mixed target
    partner = y_np[::-1]  # the batch's flipped order, as timm pairs it
    eye = np.eye(5)
    target = 0.7 * eye[y_np] + 0.3 * eye[partner]
    ref_loss, ref_grad = reference_cross_entropy(x_np, target, label_smoothing=0.1)
    for c, e, r in zip(results["always"], results["never"], (ref_loss, ref_grad)):
        assert rel_err(c, e) <= 1e-10 and rel_err(c, r) <= 1e-10


def test_out_of_memory_is_raised_not_taken_for_a_compile_failure(mode, device, monkeypatch):
    mode("always")
    monkeypatch.setattr(binding.COMPILED, "broken", None)

    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(binding.COMPILED, "graph", lambda name, fn: full)
    x = torch.randn(5, 3, dtype=torch.float64, device=device)
    with pytest.raises(torch.OutOfMemoryError):
        smoothloss.cross_entropy(x, torch.tensor([0, 1, 2, 0, 1], device=device))
    assert binding.COMPILED.broken is None  # compiling stays on
