"""smoothloss.torch against the originals it replaces, side by side.

torch.nn.CrossEntropyLoss / F.cross_entropy are called directly; timm is not a test
dependency, so its two losses are written out below exactly as timm's source has them
(timm/loss/cross_entropy.py). Nothing is compared with pasted numbers.
"""

from __future__ import annotations

import doctest
import itertools
import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import smoothloss  # noqa: E402
import smoothloss.torch as st  # noqa: E402
from smoothloss.testing import rel_err  # noqa: E402

F64 = torch.float64


def _np(t):
    return t.detach().to(F64).cpu().numpy()


# ---------------------------------------------------------------- timm, written out
def timm_label_smoothing_ce(x, target, smoothing=0.1):
    """timm.loss.LabelSmoothingCrossEntropy.forward, verbatim."""
    confidence = 1.0 - smoothing
    logprobs = F.log_softmax(x, dim=-1)
    nll_loss = -logprobs.gather(dim=-1, index=target.unsqueeze(1))
    nll_loss = nll_loss.squeeze(1)
    smooth_loss = -logprobs.mean(dim=-1)
    loss = confidence * nll_loss + smoothing * smooth_loss
    return loss.mean()


def timm_soft_target_ce(x, target):
    """timm.loss.SoftTargetCrossEntropy.forward, verbatim."""
    loss = torch.sum(-target * F.log_softmax(x, dim=-1), dim=-1)
    return loss.mean()


# ---------------------------------------------------------------- helpers
def _value_and_grad(fn, x, cotangent=None):
    """fn(x) and d<fn(x), cotangent>/dx (cotangent=1 for a scalar)."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    seed = torch.ones_like(out) if cotangent is None else cotangent
    (g,) = torch.autograd.grad(out, x, grad_outputs=seed)
    return out.detach(), g


def _make_case(rng, shape, kind, dtype=F64):
    """Logits with the classes on axis 1 (axis 0 unbatched) and matching targets."""
    x = torch.as_tensor(rng.normal(scale=2.0, size=shape), dtype=dtype)
    C = shape[1] if len(shape) >= 2 else shape[0]
    class_axis = 1 if len(shape) >= 2 else 0
    if kind == "index":
        tshape = tuple(s for i, s in enumerate(shape) if i != class_axis)
        y = rng.integers(0, C, size=tshape)
        if y.ndim:  # a few ignored positions, never all of them
            flat = y.reshape(-1)
            flat[rng.random(flat.size) < 0.25] = -100
            flat[0] = 0
        return x, torch.as_tensor(y, dtype=torch.int64)
    t = rng.random(size=shape)
    t = t / t.sum(axis=class_axis, keepdims=True)
    return x, torch.as_tensor(t, dtype=dtype)


SHAPES = {"NC": (6, 5), "NCd": (4, 5, 3), "NCdd": (3, 4, 2, 3), "C": (7,)}


# ---------------------------------------------------------------- CrossEntropyLoss vs torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_cross_entropy_loss_matches_torch_float64(shape, kind, weighted, eps, reduction):
    seed = zlib.crc32(repr((shape, kind, weighted, eps, reduction)).encode())
    rng = np.random.default_rng(seed)
    x, y = _make_case(rng, SHAPES[shape], kind)
    C = SHAPES[shape][1] if len(SHAPES[shape]) >= 2 else SHAPES[shape][0]
    w = torch.as_tensor(rng.uniform(0.2, 2.0, size=C), dtype=F64) if weighted else None
    ours = st.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=eps)
    theirs = torch.nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=eps)
    cot = None
    if reduction == "none":
        out_shape = theirs(x, y).shape
        cot = torch.as_tensor(rng.normal(size=tuple(out_shape)), dtype=F64)
    a, ga = _value_and_grad(lambda v: ours(v, y), x, cot)
    b, gb = _value_and_grad(lambda v: theirs(v, y), x, cot)
    assert a.shape == b.shape and a.dtype == b.dtype == F64
    assert rel_err(_np(a), _np(b)) <= 1e-10
    assert ga.shape == gb.shape and ga.dtype == F64
    assert rel_err(_np(ga), _np(gb)) <= 1e-10
    # the functional form agrees with torch's functional form too
    fa = st.cross_entropy(x, y, weight=w, reduction=reduction, label_smoothing=eps)
    fb = F.cross_entropy(x, y, weight=w, reduction=reduction, label_smoothing=eps)
    assert rel_err(_np(fa), _np(fb)) <= 1e-10


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_cross_entropy_loss_matches_torch_float32(kind):
    rng = np.random.default_rng(7)
    x, y = _make_case(rng, (32, 10, 4), kind, dtype=torch.float32)
    w = torch.as_tensor(rng.uniform(0.2, 2.0, size=10), dtype=torch.float32)
    ours = st.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    a, ga = _value_and_grad(lambda v: ours(v, y), x)
    b, gb = _value_and_grad(lambda v: theirs(v, y), x)
    assert a.dtype == ga.dtype == torch.float32
    assert rel_err(_np(a), _np(b)) <= 1e-5
    assert rel_err(_np(ga), _np(gb)) <= 1e-5


@pytest.mark.parametrize("ignore_index", [2, None])
def test_ignore_index_in_range_and_none(ignore_index):
    rng = np.random.default_rng(3)
    x = torch.as_tensor(rng.normal(size=(9, 4)), dtype=F64)
    y = torch.as_tensor(rng.integers(0, 4, 9))
    ours = st.CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=0.2)
    # torch has no "ignore nothing"; -100 never occurs in y, so it is the same thing
    theirs = torch.nn.CrossEntropyLoss(ignore_index=-100 if ignore_index is None else ignore_index, label_smoothing=0.2)
    a, ga = _value_and_grad(lambda v: ours(v, y), x)
    b, gb = _value_and_grad(lambda v: theirs(v, y), x)
    assert rel_err(_np(a), _np(b)) <= 1e-10 and rel_err(_np(ga), _np(gb)) <= 1e-10


def test_probability_targets_and_ignore_index():
    """PyTorch accepts only the default ignore_index with probability targets (unused)."""
    rng = np.random.default_rng(4)
    x, t = _make_case(rng, (5, 6), "prob")
    a = st.CrossEntropyLoss(label_smoothing=0.1)(x, t)
    b = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, t)
    assert rel_err(_np(a), _np(b)) <= 1e-10
    assert rel_err(_np(st.cross_entropy(x, t, ignore_index=None)), _np(F.cross_entropy(x, t))) <= 1e-10
    for ii in (0, 3):
        with pytest.raises(RuntimeError, match="ignore_index"):
            F.cross_entropy(x, t, ignore_index=ii)
        with pytest.raises(ValueError, match="ignore_index"):
            st.cross_entropy(x, t, ignore_index=ii)


@pytest.mark.parametrize(
    "size_average,reduce", [p for p in itertools.product([None, True, False], repeat=2) if p != (None, None)]
)
def test_deprecated_size_average_and_reduce(size_average, reduce):
    rng = np.random.default_rng(5)
    x, y = _make_case(rng, (6, 5), "index")
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        ours = st.CrossEntropyLoss(size_average=size_average, reduce=reduce, reduction="sum")
    theirs = torch.nn.CrossEntropyLoss(size_average=size_average, reduce=reduce, reduction="sum")
    assert ours.reduction == theirs.reduction
    assert rel_err(_np(ours(x, y)), _np(theirs(x, y))) <= 1e-10
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        fa = st.cross_entropy(x, y, size_average=size_average, reduce=reduce)
    fb = F.cross_entropy(x, y, size_average=size_average, reduce=reduce)
    assert rel_err(_np(fa), _np(fb)) <= 1e-10


def test_extras_are_forwarded_to_the_core():
    rng = np.random.default_rng(6)
    x, y = _make_case(rng, (4, 6, 3), "index")
    opts = dict(label_smoothing=0.2, convention="others", z_loss=1e-3, softcap=3.0, kl=True)
    a, ga = _value_and_grad(lambda v: st.CrossEntropyLoss(**opts)(v, y), x)
    b, gb = _value_and_grad(lambda v: smoothloss.cross_entropy(v, y, axis=1, ignore_index=-100, **opts), x)
    assert rel_err(_np(a), _np(b)) <= 1e-12 and rel_err(_np(ga), _np(gb)) <= 1e-12
    assert "convention='others'" in repr(st.CrossEntropyLoss(**opts))


# ---------------------------------------------------------------- timm drop-ins
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35])
def test_label_smoothing_cross_entropy_matches_timm(smoothing):
    rng = np.random.default_rng(int(smoothing * 100))
    x = torch.as_tensor(rng.normal(scale=2.0, size=(16, 11)), dtype=F64)
    y = torch.as_tensor(rng.integers(0, 11, 16))
    loss = st.LabelSmoothingCrossEntropy(smoothing)
    assert loss.smoothing == smoothing and loss.confidence == 1.0 - smoothing
    a, ga = _value_and_grad(lambda v: loss(v, y), x)
    b, gb = _value_and_grad(lambda v: timm_label_smoothing_ce(v, y, smoothing), x)
    assert a.shape == b.shape == () and a.dtype == F64
    assert rel_err(_np(a), _np(b)) <= 1e-10 and rel_err(_np(ga), _np(gb)) <= 1e-10


def test_label_smoothing_cross_entropy_default_and_float32():
    assert st.LabelSmoothingCrossEntropy().smoothing == 0.1
    rng = np.random.default_rng(11)
    x = torch.as_tensor(rng.normal(size=(64, 100)), dtype=torch.float32)
    y = torch.as_tensor(rng.integers(0, 100, 64))
    a, ga = _value_and_grad(lambda v: st.LabelSmoothingCrossEntropy()(v, y), x)
    b, gb = _value_and_grad(lambda v: timm_label_smoothing_ce(v, y, 0.1), x)
    assert a.dtype == ga.dtype == torch.float32
    assert rel_err(_np(a), _np(b)) <= 1e-5 and rel_err(_np(ga), _np(gb)) <= 1e-5


@pytest.mark.parametrize("shape", [(8, 7), (3, 4, 7)])
@pytest.mark.parametrize("normalised", [True, False])
def test_soft_target_cross_entropy_matches_timm(shape, normalised):
    rng = np.random.default_rng(12)
    x = torch.as_tensor(rng.normal(scale=2.0, size=shape), dtype=F64)
    t = rng.random(size=shape)
    if normalised:
        t = t / t.sum(-1, keepdims=True)
    t = torch.as_tensor(t, dtype=F64)
    a, ga = _value_and_grad(lambda v: st.SoftTargetCrossEntropy()(v, t), x)
    b, gb = _value_and_grad(lambda v: timm_soft_target_ce(v, t), x)
    assert rel_err(_np(a), _np(b)) <= 1e-10 and rel_err(_np(ga), _np(gb)) <= 1e-10


# ---------------------------------------------------------------- deliberate differences
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_zero_where_torch_gives_nan(weighted):
    x = torch.randn(4, 5, dtype=F64)
    y = torch.full((4,), -100)
    w = torch.rand(5, dtype=F64) + 0.5 if weighted else None
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(x, y)
    assert torch.isnan(theirs)  # pytorch issue 116349; if this ever changes, revisit the docs
    a, ga = _value_and_grad(lambda v: st.CrossEntropyLoss(weight=w, label_smoothing=0.1)(v, y), x)
    assert a.item() == 0.0
    assert torch.all(ga == 0)


def test_single_class_raises_where_torch_gives_zero():
    x = torch.randn(3, 1)
    y = torch.zeros(3, dtype=torch.int64)
    assert torch.nn.CrossEntropyLoss()(x, y).item() == 0.0
    with pytest.raises(ValueError, match="K=1"):
        st.CrossEntropyLoss()(x, y)


def test_16_bit_logits_give_float32_loss_and_16_bit_grad():
    rng = np.random.default_rng(13)
    x = torch.as_tensor(rng.normal(size=(8, 6)), dtype=torch.float16)
    y = torch.as_tensor(rng.integers(0, 6, 8))
    a, ga = _value_and_grad(lambda v: st.CrossEntropyLoss(label_smoothing=0.1)(v, y), x)
    assert a.dtype == torch.float32 and ga.dtype == torch.float16
    ref = F.cross_entropy(x.to(F64), y, label_smoothing=0.1)
    assert rel_err(_np(a), _np(ref)) <= 1e-5


@pytest.mark.parametrize("label_dtype", ["int32", "int16", "uint8"])
def test_more_target_and_weight_dtypes_are_accepted(label_dtype):
    rng = np.random.default_rng(14)
    x = torch.as_tensor(rng.normal(size=(6, 5)), dtype=F64)
    y = torch.as_tensor(rng.integers(0, 5, 6))
    w64 = torch.linspace(0.5, 1.5, 5, dtype=F64)
    ref = F.cross_entropy(x, y, weight=w64, label_smoothing=0.1)
    y_narrow = y.to(getattr(torch, label_dtype))
    ours = st.cross_entropy(x, y_narrow, weight=w64.to(torch.float32), label_smoothing=0.1)
    assert rel_err(_np(ours), _np(ref)) <= 1e-7  # weight rounded to float32
    a = st.LabelSmoothingCrossEntropy()(x, y_narrow)
    assert rel_err(_np(a), _np(timm_label_smoothing_ce(x, y))) <= 1e-10


# ---------------------------------------------------------------- module behaviour
def test_weight_is_a_buffer_like_torch():
    w = torch.rand(5) + 0.5
    ours, theirs = st.CrossEntropyLoss(weight=w), torch.nn.CrossEntropyLoss(weight=w)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight"}
    assert dict(ours.named_buffers())["weight"] is ours.weight
    assert list(ours.parameters()) == []
    assert set(st.CrossEntropyLoss().state_dict()) == set(torch.nn.CrossEntropyLoss().state_dict())
    # .to(dtype) moves the buffer, as in torch
    ours64 = ours.to(F64)
    assert ours64 is ours and ours.weight.dtype == F64
    assert torch.equal(ours.weight, w.to(F64))
    # state_dict round trip between ours and torch's
    fresh = torch.nn.CrossEntropyLoss(weight=torch.ones(5, dtype=F64))
    fresh.load_state_dict(ours.state_dict())
    assert torch.equal(fresh.weight, ours.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_and_device_follow_the_input(dtype):
    w = (torch.rand(5) + 0.5).to(F64)  # buffer dtype differs from the input's on purpose
    loss = st.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    x = torch.randn(4, 5, 2, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 5, (4, 2))
    for reduction in ("mean", "none"):
        loss.reduction = reduction
        out = loss(x, y)
        assert out.dtype == dtype and out.device == x.device
    (g,) = torch.autograd.grad(loss(x, y).sum(), x)
    assert g.dtype == dtype and g.device == x.device
    t = torch.softmax(torch.randn(4, 5, dtype=dtype), 1)
    assert st.SoftTargetCrossEntropy()(x[..., 0], t).dtype == dtype
    assert st.LabelSmoothingCrossEntropy()(x[..., 0], y[:, 0]).dtype == dtype


def test_unbatched_reduction_none_is_a_scalar():
    x = torch.randn(6, dtype=F64)
    y = torch.tensor(4)
    for reduction in ("none", "mean", "sum"):
        a = st.cross_entropy(x, y, reduction=reduction, label_smoothing=0.1)
        b = F.cross_entropy(x, y, reduction=reduction, label_smoothing=0.1)
        assert a.shape == b.shape == () and rel_err(_np(a), _np(b)) <= 1e-10


# ---------------------------------------------------------------- torch.compile
def _compile_case():
    rng = np.random.default_rng(21)
    x, y = _make_case(rng, (6, 5, 3), "index")
    w = torch.as_tensor(rng.uniform(0.5, 1.5, 5), dtype=F64)
    loss = st.CrossEntropyLoss(weight=w, label_smoothing=0.1)

    def fn(v, t):
        return loss(v, t) * 2.0

    return fn, x, y, w


# Third-party warnings under torch.compile, filtered here only (pyproject already ignores
# UserWarning from torch.*, e.g. dynamo's note on array_api_compat's lru_cache helpers):
# * dynamo, tracing the core's torch.autograd.Function, instantiates it internally and
#   torch.autograd.function warns "... should not be instantiated" (DeprecationWarning);
# * inductor's import of torch.jit warns "`torch.jit.script_method` is deprecated".
_DYNAMO_FUNCTION_DEPRECATION = "ignore:.*should not be instantiated:DeprecationWarning"
_JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def _backend_compiler_errors():
    """Errors that mean the inductor toolchain (C++ compiler) failed, not our code."""
    errors = [torch._dynamo.exc.BackendCompilerFailed]
    import torch._inductor.exc as inductor_exc

    errors += [getattr(inductor_exc, n) for n in ("CppCompileError", "InductorError") if hasattr(inductor_exc, n)]
    return tuple(errors)


@pytest.mark.filterwarnings(_DYNAMO_FUNCTION_DEPRECATION)
@pytest.mark.filterwarnings(_JIT_DEPRECATION)
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_torch_compile_matches_eager(backend):
    fn, x, y, w = _compile_case()
    torch._dynamo.reset()
    # (no cpp.vec_isa_ok=False to speed the compile up: inductor then builds a scalar
    # precompiled header that later vectorised compiles in this process reuse and fail on)
    # fullgraph=True: the adapter and the core trace as one graph, no graph breaks
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    if backend == "eager":
        a, ga = _value_and_grad(lambda v: compiled(v, y), x)
    else:
        try:
            a, ga = _value_and_grad(lambda v: compiled(v, y), x)
        except _backend_compiler_errors() as exc:
            pytest.skip(f"inductor cannot compile on this machine: {type(exc).__name__}: {exc}")
    b, gb = _value_and_grad(lambda v: fn(v, y), x)
    assert rel_err(_np(a), _np(b)) <= 1e-12 and rel_err(_np(ga), _np(gb)) <= 1e-12
    # and equal to torch's own loss
    ref = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(x, y) * 2.0
    assert rel_err(_np(a), _np(ref)) <= 1e-10


# ---------------------------------------------------------------- autocast
@pytest.mark.parametrize("weighted", [False, True])
def test_autocast_bf16_logits_give_float32_loss(weighted):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 7)
    x = torch.randn(32, 16)
    y = torch.randint(0, 7, (32,))
    w = torch.rand(7) + 0.5 if weighted else None
    loss_fn = st.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        loss = loss_fn(logits, y)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    assert lin.weight.grad.abs().sum() > 0
    rounded = logits.detach().to(F64)
    ref = F.cross_entropy(rounded, y, weight=None if w is None else w.to(F64), label_smoothing=0.1)
    assert rel_err(_np(loss), _np(ref)) <= 1e-2
    # autocast does not lower the core's float32 accumulation: same as outside autocast
    outside = loss_fn(logits.detach(), y)
    assert rel_err(_np(loss), _np(outside)) <= 1e-6
    assert rel_err(_np(loss), _np(ref)) <= 1e-5


# ---------------------------------------------------------------- bad input
def _bad_cases():
    x = torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    return [
        ("label out of range", ValueError, lambda: st.CrossEntropyLoss()(x, torch.tensor([0, 1, 5, 3]))),
        ("negative label", ValueError, lambda: st.CrossEntropyLoss()(x, torch.tensor([0, -1, 2, 3]))),
        ("wrong weight length", ValueError, lambda: st.CrossEntropyLoss(weight=torch.ones(4))(x, y)),
        ("2-D weight", ValueError, lambda: st.CrossEntropyLoss(weight=torch.ones(1, 5))),
        ("numpy weight", TypeError, lambda: st.CrossEntropyLoss(weight=np.ones(5))),
        ("target shape", ValueError, lambda: st.CrossEntropyLoss()(x, torch.tensor([0, 1, 2]))),
        ("prob shape", ValueError, lambda: st.cross_entropy(x, torch.rand(4, 4))),
        ("integer logits", TypeError, lambda: st.CrossEntropyLoss()(torch.ones(4, 5, dtype=torch.int64), y)),
        ("bool target", TypeError, lambda: st.CrossEntropyLoss()(x, y > 1)),
        ("numpy input", TypeError, lambda: st.cross_entropy(x.numpy(), y.numpy())),
        ("smoothing > 1", ValueError, lambda: st.CrossEntropyLoss(label_smoothing=1.5)),
        ("smoothing str", TypeError, lambda: st.CrossEntropyLoss(label_smoothing="0.1")),
        ("reduction", ValueError, lambda: st.CrossEntropyLoss(reduction="elementwise_mean")),
        ("reduction functional", ValueError, lambda: st.cross_entropy(x, y, reduction="avg")),
        ("convention", ValueError, lambda: st.CrossEntropyLoss(convention="fairseq")),
        ("ignore_index float", TypeError, lambda: st.CrossEntropyLoss(ignore_index=1.5)),
        ("scalar input", ValueError, lambda: st.cross_entropy(torch.tensor(1.0), torch.tensor(0))),
        ("timm smoothing 1", ValueError, lambda: st.LabelSmoothingCrossEntropy(1.0)),
        ("timm smoothing < 0", ValueError, lambda: st.LabelSmoothingCrossEntropy(-0.1)),
        ("timm label range", ValueError, lambda: st.LabelSmoothingCrossEntropy()(x, torch.tensor([0, 1, 9, 3]))),
        ("timm float target", TypeError, lambda: st.LabelSmoothingCrossEntropy()(x, torch.rand(4, 5))),
        ("soft int target", TypeError, lambda: st.SoftTargetCrossEntropy()(x, y)),
        ("soft shape", ValueError, lambda: st.SoftTargetCrossEntropy()(x, torch.rand(1, 5))),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())), ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises(case):
    _, exc, call = _bad_cases()[case]
    with pytest.raises(exc):
        call()


# ---------------------------------------------------------------- docs and imports
def test_docstring_examples_run():
    result = doctest.testmod(st, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 20 and result.failed == 0


def test_import_smoothloss_does_not_import_the_torch_adapter():
    code = "import sys, smoothloss; print('smoothloss.torch' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ================================================================ issue 4: BinaryCrossEntropy and Mixup
class TimmBinaryCrossEntropy(torch.nn.Module):
    """timm.loss.BinaryCrossEntropy (timm/loss/binary_cross_entropy.py), written out as
    timm has it: one-hot with off/on values via scatter_, optional ``>`` threshold, then
    F.binary_cross_entropy_with_logits; sum_classes sums the classes and averages."""

    def __init__(self, smoothing=0.1, target_threshold=None, weight=None, reduction="mean",
                 sum_classes=False, pos_weight=None):
        super().__init__()
        assert 0.0 <= smoothing < 1.0
        if pos_weight is not None and not isinstance(pos_weight, torch.Tensor):
            pos_weight = torch.tensor(pos_weight)
        self.smoothing = smoothing
        self.target_threshold = target_threshold
        self.reduction = "none" if sum_classes else reduction
        self.sum_classes = sum_classes
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, x, target):
        batch_size = x.shape[0]
        assert batch_size == target.shape[0]
        if target.shape != x.shape:
            num_classes = x.shape[-1]
            off_value = self.smoothing / num_classes
            on_value = 1.0 - self.smoothing + off_value
            target = target.long().view(-1, 1)
            target = torch.full(
                (batch_size, num_classes), off_value, device=x.device, dtype=x.dtype
            ).scatter_(1, target, on_value)
        if self.target_threshold is not None:
            target = target.gt(self.target_threshold).to(dtype=target.dtype)
        loss = F.binary_cross_entropy_with_logits(
            x, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )
        if self.sum_classes:
            loss = loss.sum(-1).mean()
        return loss


BCE_N, BCE_K = 6, 5
BCE_OPTIONS = {  # name -> constructor kwargs shared by ours and timm's (tensors in float64)
    "default": {},
    "no-smoothing": {"smoothing": 0.0},
    "smoothing-0.3": {"smoothing": 0.3},
    "threshold": {"smoothing": 0.1, "target_threshold": 0.2},
    "weights": {"smoothing": 0.2, "weight": "class", "pos_weight": "class"},
    "per-element-weight": {"weight": "element", "pos_weight": 3.0},
}


def _bce_case(name, kind, seed=0):
    """(kwargs, logits (N, K) with large entries too, targets) in float64."""
    rng = np.random.default_rng(seed)
    kwargs = dict(BCE_OPTIONS[name])
    for key in ("weight", "pos_weight"):
        if kwargs.get(key) == "class":
            kwargs[key] = torch.as_tensor(rng.uniform(0.2, 3.0, size=BCE_K), dtype=F64)
        elif kwargs.get(key) == "element":
            kwargs[key] = torch.as_tensor(rng.uniform(0.2, 3.0, size=(BCE_N, BCE_K)), dtype=F64)
    x = torch.as_tensor(rng.normal(scale=3.0, size=(BCE_N, BCE_K)), dtype=F64)
    x[0, 0], x[1, 1] = 60.0, -60.0  # saturated logits stay finite and exact
    if kind == "index":
        y = torch.as_tensor(rng.integers(0, BCE_K, size=BCE_N))
    else:  # e.g. soft mixup targets
        y = torch.as_tensor(rng.random((BCE_N, BCE_K)), dtype=F64)
    return kwargs, x, y


@pytest.mark.parametrize("sum_classes", [False, True], ids=["elementwise", "sum_classes"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("name", list(BCE_OPTIONS))
def test_binary_cross_entropy_matches_timm(name, kind, reduction, sum_classes):
    kwargs, x, y = _bce_case(name, kind)
    kwargs.update(reduction=reduction, sum_classes=sum_classes)
    ours, theirs = st.BinaryCrossEntropy(**kwargs).to(F64), TimmBinaryCrossEntropy(**kwargs).to(F64)
    assert ours.reduction == theirs.reduction  # timm stores "none" with sum_classes
    v1, g1 = _value_and_grad(lambda z: ours(z, y), x)
    v2, g2 = _value_and_grad(lambda z: theirs(z, y), x)
    assert v1.shape == v2.shape and v1.dtype == v2.dtype == F64
    assert torch.isfinite(v1).all() and torch.isfinite(g1).all()
    assert rel_err(_np(v1), _np(v2)) <= 1e-10
    assert rel_err(_np(g1), _np(g2)) <= 1e-10


@pytest.mark.parametrize("threshold", [None, 0.45])
def test_binary_cross_entropy_smooth_dense_goes_towards_one_half(threshold):
    _, x, t = _bce_case("default", "dense")
    ours = st.BinaryCrossEntropy(0.2, target_threshold=threshold, smooth_dense=True)
    # Keras's convention on dense targets, then timm's loss with no further smoothing
    theirs = TimmBinaryCrossEntropy(0.2, target_threshold=threshold)
    v1, g1 = _value_and_grad(lambda z: ours(z, t), x)
    v2, g2 = _value_and_grad(lambda z: theirs(z, t * 0.8 + 0.1), x)
    assert rel_err(_np(v1), _np(v2)) <= 1e-10 and rel_err(_np(g1), _np(g2)) <= 1e-10
    # class indices are smoothed the same way with or without smooth_dense
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    assert torch.equal(ours(x, y), st.BinaryCrossEntropy(0.2, target_threshold=threshold)(x, y))


def test_binary_cross_entropy_with_mixup_targets():
    """timm's recipe: Mixup's soft (already smoothed) targets go through unchanged."""
    mixup_fn = st.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=BCE_K, seed=3)
    images = torch.rand(BCE_N, 3, 8, 8, dtype=F64)
    _, target = mixup_fn(images, torch.tensor([0, 1, 2, 3, 4, 0]))
    x = torch.randn(BCE_N, BCE_K, dtype=F64)
    for threshold in (None, 0.2):
        a = st.BinaryCrossEntropy(target_threshold=threshold)(x, target)
        b = TimmBinaryCrossEntropy(target_threshold=threshold)(x, target)
        assert rel_err(_np(a), _np(b)) <= 1e-10


def test_binary_cross_entropy_index_targets_like_timm_view():
    _, x, y = _bce_case("default", "index")
    loss = st.BinaryCrossEntropy()
    assert torch.equal(loss(x, y[:, None]), loss(x, y))  # (N, 1) labels, as timm's view(-1, 1)
    assert rel_err(_np(loss(x, y.to(torch.int32))), _np(TimmBinaryCrossEntropy()(x, y))) <= 1e-10
    # any leading shape with class indices (timm: (N, C) only)
    x3 = torch.randn(2, 3, BCE_K, dtype=F64)
    y3 = torch.randint(0, BCE_K, (2, 3))
    flat = TimmBinaryCrossEntropy()(x3.reshape(-1, BCE_K), y3.reshape(-1))
    assert rel_err(_np(loss(x3, y3)), _np(flat)) <= 1e-10


def test_binary_cross_entropy_buffers_like_timm():
    w = torch.rand(BCE_K) + 0.5
    ours = st.BinaryCrossEntropy(weight=w, pos_weight=2.0)
    theirs = TimmBinaryCrossEntropy(weight=w, pos_weight=2.0)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight", "pos_weight"}
    assert ours.pos_weight.shape == () and list(ours.parameters()) == []
    assert ours.to(F64) is ours and ours.weight.dtype == ours.pos_weight.dtype == F64
    fresh = st.BinaryCrossEntropy(weight=torch.ones(BCE_K), pos_weight=torch.tensor(1.0))
    fresh.load_state_dict(theirs.state_dict())
    assert torch.equal(fresh.weight, w) and float(fresh.pos_weight) == 2.0
    assert set(st.BinaryCrossEntropy().state_dict()) == set(TimmBinaryCrossEntropy().state_dict()) == set()
    assert "smoothing=0.1" in repr(ours)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_binary_cross_entropy_dtype_and_device_follow_the_input(dtype):
    loss = st.BinaryCrossEntropy(weight=torch.rand(BCE_K, dtype=F64), pos_weight=torch.rand(BCE_K))
    x = torch.randn(BCE_N, BCE_K, dtype=dtype, requires_grad=True)
    out = loss(x, torch.randint(0, BCE_K, (BCE_N,)))
    assert out.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype) and out.device == x.device
    (g,) = torch.autograd.grad(out, x)
    assert g.dtype == dtype and g.device == x.device


@pytest.mark.parametrize(
    "make",
    [
        lambda: st.BinaryCrossEntropy(smoothing=1.0),
        lambda: st.BinaryCrossEntropy(smoothing=-0.1),
        lambda: st.BinaryCrossEntropy(reduction="batchmean"),
        lambda: st.BinaryCrossEntropy(target_threshold="0.2"),
        lambda: st.BinaryCrossEntropy(pos_weight="2"),
        lambda: st.BinaryCrossEntropy(weight=[1.0, 2.0]),
        lambda: st.BinaryCrossEntropy()(torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])),
        lambda: st.BinaryCrossEntropy()(torch.randn(4, 3), torch.tensor([0, 1, 3, 1])),
        lambda: st.BinaryCrossEntropy()(torch.randn(4, 3), torch.rand(4, 2)),
        lambda: st.BinaryCrossEntropy()(np.zeros((4, 3)), torch.tensor([0, 1, 2, 1])),
    ],
    ids=["smoothing-1", "smoothing-negative", "reduction", "threshold-str", "pos_weight-str",
         "weight-list", "float-indices", "label-out-of-range", "shape", "numpy-logits"],
)
def test_binary_cross_entropy_bad_input_raises(make):
    with pytest.raises((ValueError, TypeError)):
        make()


MIXUP_CONFIGS = {
    "mixup": dict(mixup_alpha=0.8),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    "both": dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5),
    "minmax": dict(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8), correct_lam=False),
    "prob-0.5": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5),
}


@pytest.mark.parametrize("batch", [6, 7], ids=["even", "odd"])
@pytest.mark.parametrize("config", list(MIXUP_CONFIGS))
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_equals_core_mixup_with_the_same_seed(mode, config, batch):
    kwargs = dict(MIXUP_CONFIGS[config], mode=mode, label_smoothing=0.1, num_classes=5)
    ours, core = st.Mixup(**kwargs, seed=11), smoothloss.Mixup(**kwargs, seed=11)
    assert isinstance(ours, smoothloss.Mixup)
    rng = np.random.default_rng(batch)
    for _ in range(3):  # successive calls keep drawing from the same stream
        x_np = rng.random((batch, 3, 9, 10), dtype=np.float32)
        y_np = rng.integers(0, 5, size=batch)
        x, y = torch.from_numpy(x_np.copy()), torch.from_numpy(y_np)
        mixed, target = ours(x, y)
        mixed_np, target_np = core(x_np, y_np)
        assert isinstance(mixed, torch.Tensor) and isinstance(target, torch.Tensor)
        np.testing.assert_array_equal(mixed.numpy(), mixed_np)
        np.testing.assert_array_equal(target.numpy(), target_np)
        assert torch.equal(x, torch.from_numpy(x_np))  # the input is left unchanged
        assert mixed.data_ptr() != x.data_ptr()
        assert torch.allclose(target.sum(-1), torch.ones(batch))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_keeps_device_and_dtype_and_odd_middle(mode, dtype):
    mixup_fn = st.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode, num_classes=4, seed=0)
    x = torch.rand(5, 2, 6, 6).to(dtype)
    y = torch.tensor([0, 1, 2, 3, 0], dtype=torch.int32)  # a narrower label dtype is fine
    before = x.clone()
    mixed, target = mixup_fn(x, y)
    assert mixed.dtype == dtype and mixed.device == x.device and mixed.shape == x.shape
    assert target.dtype == (F64 if dtype == F64 else torch.float32) and target.device == x.device
    assert target.shape == (5, 4)
    assert torch.equal(x, before)
    # the middle example of an odd batch pairs with itself: its image and its target stay
    assert torch.allclose(mixed[2].float(), x[2].float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert torch.allclose(target[2].double(), torch.tensor([0.025, 0.025, 0.925, 0.025], dtype=F64), atol=1e-6)


@pytest.mark.parametrize("cls", ["Mixup", "FastCollateMixup"])
def test_mixup_is_timm_constructor_plus_seed(cls):
    """timm 1.0.31's positional parameters in timm's order (multi_label included), then
    ``seed``, then the keyword-only ``box_rule``."""
    import inspect

    params = list(inspect.signature(getattr(st, cls)).parameters.items())
    names = [name for name, _ in params]
    assert names == [
        "mixup_alpha", "cutmix_alpha", "cutmix_minmax", "prob", "switch_prob", "mode", "correct_lam",
        "label_smoothing", "num_classes", "multi_label", "seed", "box_rule",
    ]
    assert params[-1][1].kind is inspect.Parameter.KEYWORD_ONLY
    defaults = {name: p.default for name, p in params}
    assert defaults["label_smoothing"] == 0.1 and defaults["num_classes"] == 1000 and defaults["mode"] == "batch"
    assert defaults["multi_label"] is False and defaults["box_rule"] == "timm>=1.0.29"
    if cls != "Mixup":
        return
    mixup_fn = st.Mixup(cutmix_minmax=(0.2, 0.8), num_classes=3, seed=0)
    assert mixup_fn.cutmix_alpha == 1.0 and mixup_fn.mixup_enabled  # as timm
    mixup_fn.mixup_enabled = False  # timm's switch for the end of training: targets only smoothed
    x = torch.rand(4, 1, 4, 4)
    mixed, target = mixup_fn(x, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(mixed, x) and mixed is not x
    assert torch.allclose(target[0], torch.tensor([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: st.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0),
        lambda: st.Mixup(mode="half"),
        lambda: st.Mixup(num_classes=0),
        lambda: st.Mixup(num_classes=3)(torch.rand(2, 1, 4, 4), torch.tensor([0.0, 1.0])),
        lambda: st.Mixup(num_classes=3)(np.zeros((2, 1, 4, 4), np.float32), torch.tensor([0, 1])),
        lambda: st.Mixup(num_classes=3)(torch.rand(2, 4, 4), torch.tensor([0, 1])),
    ],
    ids=["nothing-to-mix", "mode", "num_classes", "float-target", "numpy-images", "rank-3"],
)
def test_mixup_bad_input_raises(make):
    with pytest.raises((ValueError, TypeError)):
        make()


@pytest.mark.filterwarnings(_DYNAMO_FUNCTION_DEPRECATION)
def test_binary_cross_entropy_under_torch_compile():
    kwargs, x, y = _bce_case("weights", "index")
    loss = st.BinaryCrossEntropy(**kwargs, target_threshold=0.1).to(F64)
    torch._dynamo.reset()
    compiled = torch.compile(lambda v: loss(v, y), backend="eager", fullgraph=True)  # no graph breaks
    a, ga = _value_and_grad(compiled, x)
    b, gb = _value_and_grad(lambda v: loss(v, y), x)
    assert rel_err(_np(a), _np(b)) <= 1e-12 and rel_err(_np(ga), _np(gb)) <= 1e-12


def test_first_call_inside_a_fullgraph_compile():
    """The torch binding is found and made even when smoothloss's very first call is
    inside ``torch.compile(fullgraph=True)`` (a fresh process, nothing bound before)."""
    import subprocess
    import sys

    script = (
        "import torch, smoothloss\n"
        "f = torch.compile(lambda x, y: smoothloss.cross_entropy(x, y, label_smoothing=0.1),"
        " fullgraph=True, backend='eager')\n"
        "x = torch.randn(4, 5, dtype=torch.float64); y = torch.tensor([0, 1, 2, 3])\n"
        "want = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)\n"
        "assert torch.allclose(f(x, y), want, rtol=1e-12, atol=0), (f(x, y), want)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


# ---------------------------------------------------------------- the eager kernels' two forms
@pytest.mark.parametrize("shape", [(32, 10), (600, 10), (3, 50, 70), (8, 1500)],
                         ids=["tiny-fused", "short-rows-composed", "3d-composed", "long-rows-fused"])
def test_native_row_kernels_match_the_composition(shape):
    """TorchKernels' statistics and softmax, in both forms (torch's fused softmax kernels
    and the in-place composition, chosen by shape on the CPU), against the Array-API
    composition in float64, with a large common offset."""
    from smoothloss.backends.torch import FW, row_kernels

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 1e4
    K = shape[-1]
    w = torch.rand(K, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, shape[:-1], generator=gen)
    assert row_kernels(x) == (shape in [(32, 10), (8, 1500)])
    for weight, sum_w in ((None, float(K)), (w, w.sum())):
        native = FW.native.log_softmax_stats(x, weight, sum_w, y)
        ref = FW.reference.log_softmax_stats(x, weight, sum_w, y)
        for a, b in zip(native, ref):
            assert rel_err(a.numpy(), b.numpy()) <= 1e-12
    m, lse_rel = native[:2]
    g = FW.native.softmax_affine(x, (m, lse_rel), 0.5, 0.25)
    want = FW.reference.softmax_affine(x, (m, lse_rel), 0.5, 0.25).numpy()
    assert rel_err(g.numpy(), want) <= 1e-12
    # without stats: the same sums, and whatever stands for the statistics gives the same softmax
    for weight, sum_w in ((None, float(K)), (w, w.sum())):
        lean = FW.native.log_softmax_stats(x, weight, sum_w, y, stats=False)
        ref = FW.reference.log_softmax_stats(x, weight, sum_w, y)
        for a, b in zip(lean[2:], ref[2:]):
            assert rel_err(a.numpy(), b.numpy()) <= 1e-12
    assert rel_err(FW.native.softmax_affine(x, lean[:2], 0.5, 0.25).numpy(), want) <= 1e-12


def test_add_scaled_is_one_op_with_the_reference_value():
    """``add_scaled(a, b, c) = a + b·c``: torch's one-op form (``alpha``) against the
    composition, for a number and for an array c."""
    from smoothloss.backends.torch import FW

    gen = torch.Generator().manual_seed(4)
    a, b, c = (torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(3))
    for coef in (0.3, -2.5, c):
        want = a.numpy() + b.numpy() * (coef if isinstance(coef, float) else coef.numpy())
        assert rel_err(FW.native.add_scaled(a, b, coef).numpy(), want) <= 1e-15
        assert rel_err(FW.reference.add_scaled(a, b, coef).numpy(), want) <= 1e-15


def test_small_eager_calls_make_the_gradient_in_the_forward():
    """A small eager call with a scalar loss runs the function that makes the gradient in
    the forward: the backward scales it by the cotangent, a retained graph gives it twice,
    and create_graph still differentiates again."""
    from smoothloss.backends import torch_autodiff as binding
    from smoothloss.testing import reference_cross_entropy

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = smoothloss.cross_entropy(x, y, label_smoothing=0.1, reduction="sum")
    assert type(loss.grad_fn).__name__ == "_SmallCrossEntropyFunctionBackward"
    ref_loss, ref_grad = reference_cross_entropy(x.detach().numpy(), y.numpy(), label_smoothing=0.1, reduction="sum")
    (g3,) = torch.autograd.grad(3.0 * loss, x, retain_graph=True)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    assert rel_err(loss.detach().numpy(), ref_loss) <= 1e-12
    assert rel_err(g3.numpy(), 3.0 * ref_grad) <= 1e-12 and rel_err(g1.numpy(), ref_grad) <= 1e-12
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    assert g.requires_grad and rel_err(g.detach().numpy(), ref_grad) <= 1e-12
    assert torch.autograd.gradgradcheck(lambda x: smoothloss.cross_entropy(x, y, label_smoothing=0.1), (x,))
    # "none", a differentiable weight, and large inputs take the general function
    assert type(smoothloss.cross_entropy(x, y, reduction="none").grad_fn).__name__ == "CrossEntropyFunctionBackward"
    w = torch.ones(4, dtype=torch.float64, requires_grad=True)
    assert type(smoothloss.cross_entropy(x, y, weight=w).grad_fn).__name__ == "CrossEntropyFunctionBackward"
    assert binding.SMALL_CALL >= x.numel()
    big = torch.randn(binding.SMALL_CALL // 2 + 1, 2, dtype=torch.float64, requires_grad=True)
    big_loss = smoothloss.cross_entropy(big, torch.zeros(big.shape[0], dtype=torch.int64))
    assert type(big_loss.grad_fn).__name__ == "CrossEntropyFunctionBackward"
