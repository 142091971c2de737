"""smoothloss.cut_cross_entropy against Cut Cross-Entropy's API and its own test cases.

Part 1 checks the drop-in against a plain float64 reference written here (dense logits
``e @ c.T + bias``, softcap, shift, ignore_index, the reductions, the per-position
log-sum-exp), closed forms, CCE's argument checks and its signature.

Part 2 ports apple/ml-cross-entropy's own tests, at commit
d42911f9b1a1f98289bb601c35c8151562603d74 (2025-06-26, version 25.6.4):

* ``tests/test_cce_loss_forward.py::test_loss_forward`` (288 cases),
* ``tests/test_cce_loss_backward.py::test_loss_backward`` (2592 cases) and
  ``::test_loss_partials`` (3),
* ``tests/test_cce_lse.py::test_lse`` (36): upstream calls its internal kernel
  ``cce_lse_forward_kernel(e, c, bias, softcap=softcap)``; here the public
  ``linear_cross_entropy(..., return_lse=True)``, which returns that lse,
* ``tests/test_vocab_parallel.py::test_vocab_parallel`` (16): skipped, vocab_parallel_options
  is not supported (a documented difference).

Not ported: ``test_cce_indexed_dot.py`` (an internal Triton kernel), ``test_compute_z_loss.py``
and ``test_partition_n_into_range`` (CCE utilities that smoothloss does not ship).

The parametrisations and the calls of ``linear_cross_entropy`` are upstream's; their
reference (``_loss``, ``_grads``, ``_lse``, with ``softcapping`` and ``compute_z_loss``) is
rewritten below. Changes for CPU: the device is the CPU and ``torch.manual_seed`` replaces
``torch.cuda.manual_seed``; upstream's "requires CUDA" skips are dropped (bfloat16 and
float16 run on CPU); ``torch._dynamo.config.cache_size_limit`` is not set (nothing is
compiled); the ``set_float32_matmul_precision`` calls are kept and undone after each test.
Scaled down for CPU time: ``test_loss_backward`` runs 144 of its 2592 cases, impl "cce"
(every impl takes the same path here), shape (252, 507, 123) (the one with no
power-of-two size) and has_bias=True (no bias is covered by Part 1); the rest skip.
With a wider skip (all 864 "cce" cases and the float32 ones of the other impls, 1440
cases) every case passed.
"""

from __future__ import annotations

import enum
import inspect
import math

import pytest

torch = pytest.importorskip("torch")

import smoothloss  # noqa: E402
from smoothloss.cut_cross_entropy import (  # noqa: E402
    IGNORE_INDEX,
    LinearCrossEntropy,
    LinearCrossEntropyImpl,
    linear_cross_entropy,
)

F = torch.nn.functional


@pytest.fixture(autouse=True)
def _eager_and_matmul_precision_kept():
    """The eager path only (Inductor compiles would take most of the file's time and test
    nothing of this adapter), and upstream's matmul-precision calls undone."""
    before = torch.get_float32_matmul_precision()
    mode = smoothloss.set_compile_mode("never")
    yield
    smoothloss.set_compile_mode(mode)
    torch.set_float32_matmul_precision(before)


# ---------------------------------------------------------------------------------------
# Part 1: a float64 reference and CCE's API


def reference(e, c, targets, bias=None, ignore_index=-100, softcap=None, reduction="mean", shift=0):
    """``(loss, lse)`` from the dense float64 logits; lse is 0 at ignored positions, the
    mean over no valid position is 0/0."""
    e, c = e.double(), c.double()
    s = int(shift)
    if s:
        e, targets = e[..., :-s, :], targets[..., s:]
    z = e @ c.T
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = targets != ignore_index
    lse = torch.logsumexp(z, dim=-1)
    z_y = torch.gather(z, -1, torch.where(valid, targets, 0)[..., None])[..., 0]
    per = torch.where(valid, lse - z_y, 0.0)
    loss = {"none": per, "sum": per.sum(), "mean": per.sum() / valid.sum()}[reduction]
    return loss, torch.where(valid, lse, 0.0)


def _inputs(shape=(3, 7, 5), V=11, dtype=torch.float64, bias=True, invalids=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    c = torch.randn(V, shape[-1], generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = (torch.randn(V, generator=g, dtype=torch.float64).to(dtype).requires_grad_()) if bias else None
    y = torch.randint(0, V, shape[:-1], generator=g)
    if invalids:
        y[torch.rand(y.shape, generator=g) < 0.3] = IGNORE_INDEX
        y[..., -1] = 1  # at least one valid target after any shift
    return e, c, b, y


def _grads(value, *leaves):
    return torch.autograd.grad(value, [t for t in leaves if t is not None])


@pytest.mark.parametrize("invalids", [False, True])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shift", [0, 1, 3, True, False])
def test_matches_the_float64_reference(shift, reduction, softcap, has_bias, invalids):
    e, c, b, y = _inputs(bias=has_bias, invalids=invalids)
    loss, lse = linear_cross_entropy(e, c, y, bias=b, softcap=softcap, reduction=reduction, shift=shift, return_lse=True)
    ref_loss, ref_lse = reference(e, c, y, b, softcap=softcap, reduction=reduction, shift=shift)
    T = y.shape[-1] - int(shift)
    assert lse.shape == (3, T) and lse.dtype == torch.float64
    assert loss.shape == ((3, T) if reduction == "none" else ())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)
    # the gradient of the loss and of a z-loss on the returned lse (CCE's compute_z_loss use)
    ours = _grads(loss.sum() + 0.1 * lse.pow(2).sum(), e, c, b)
    theirs = _grads(ref_loss.sum() + 0.1 * ref_lse.pow(2).sum(), e, c, b)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if int(shift):  # the last `shift` positions predict nothing
        assert torch.all(ours[0][:, T:] == 0)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_closed_form_zero_embeddings(reduction, return_lse):
    """Zero embeddings make every logit 0: each valid position's loss and lse is log V."""
    V = 13
    e = torch.zeros(2, 6, 4, dtype=torch.float64)
    c = torch.randn(V, 4, dtype=torch.float64)
    y = torch.tensor([[1, 2, -100, 3, 4, 5], [-100, 0, 12, -100, -100, 7]])
    out = linear_cross_entropy(e, c, y, shift=2, reduction=reduction, return_lse=return_lse)
    loss, lse = out if return_lse else (out, None)
    valid = y[:, 2:] != -100  # 5 valid of the 8 shifted targets
    log_v = torch.tensor(math.log(V), dtype=torch.float64)
    per_position = torch.where(valid, log_v, torch.zeros((), dtype=torch.float64))
    expected = {"mean": log_v, "sum": 5 * log_v, "none": per_position}[reduction]
    torch.testing.assert_close(loss, expected, rtol=4e-16, atol=0)
    if return_lse:
        torch.testing.assert_close(lse, per_position, rtol=4e-16, atol=0)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored(reduction, return_lse):
    """CCE: the mean of no valid position is NaN (``nll.mean()`` of an empty tensor); the
    sum is 0, "none" all zeros; the gradient is 0 (CCE's torch_compile path)."""
    e, c, b, y = _inputs()
    y = torch.full_like(y, IGNORE_INDEX)
    out = linear_cross_entropy(e, c, y, b, reduction=reduction, return_lse=return_lse)
    loss = out[0] if return_lse else out
    if reduction == "mean":
        assert torch.isnan(loss)
    else:
        assert torch.all(loss == 0)
    grads = _grads(loss.sum() + (out[1].sum() if return_lse else 0), e, c, b)
    assert all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_inputs_give_a_float32_loss_and_lse(dtype):
    e, c, b, y = _inputs(shape=(2, 9, 16), V=37, dtype=dtype)
    loss, lse = linear_cross_entropy(e, c, y, b, shift=1, softcap=3.0, return_lse=True)
    assert loss.dtype == lse.dtype == torch.float32
    ref_loss, ref_lse = reference(e, c, y, b, softcap=3.0, shift=1)
    # the logits are rounded to `dtype` once (as upstream's own `ref`): that bounds the error
    z_max = (e.double().abs().sum(-1).max() * c.double().abs().max() + b.double().abs().max()).item()
    tol = 2 * torch.finfo(dtype).eps * min(z_max, 3.0) + 1e-6
    torch.testing.assert_close(loss.double(), ref_loss, rtol=0, atol=tol)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=tol)
    grads = _grads(loss + lse.sum(), e, c, b)
    assert [g.dtype for g in grads] == [dtype] * 3


def test_positional_call_in_cce_order():
    e, c, b, y = _inputs()
    loss, lse = linear_cross_entropy(e, c, y, b, -100, 2.0, "none", 1, True, 1e-3, True, True, False, False, "cce")
    ref_loss, ref_lse = reference(e, c, y, b, -100, 2.0, "none", 1)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(lse, ref_lse)


UPSTREAM_SIGNATURE = [
    ("e", inspect.Parameter.empty), ("c", inspect.Parameter.empty), ("targets", inspect.Parameter.empty),
    ("bias", None), ("ignore_index", -100), ("softcap", None), ("reduction", "mean"), ("shift", 0),
    ("return_lse", False), ("filter_eps", "auto"), ("accum_e_fp32", False), ("accum_c_fp32", False),
    ("filter_e_grad", True), ("filter_c_grad", True), ("impl", LinearCrossEntropyImpl.CCE),
    ("vocab_parallel_options", None),
]


def test_signature_is_cces():
    """CCE's ``linear_cross_entropy`` (cut_cross_entropy/linear_cross_entropy.py, Linux
    default impl) in order, then smoothloss's keyword-only chunk_size."""
    params = list(inspect.signature(linear_cross_entropy).parameters.values())
    assert [(p.name, p.default) for p in params[: len(UPSTREAM_SIGNATURE)]] == UPSTREAM_SIGNATURE
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[: len(UPSTREAM_SIGNATURE)])
    assert [(p.name, p.kind) for p in params[len(UPSTREAM_SIGNATURE):]] == [("chunk_size", inspect.Parameter.KEYWORD_ONLY)]
    module = [(p.name, p.default) for p in inspect.signature(LinearCrossEntropy).parameters.values()]
    assert module == [("ignore_index", -100), ("softcap", None), ("reduction", "mean"), ("shift", 0),
                      ("filter_eps", "auto"), ("accum_e_fp32", False), ("accum_c_fp32", False),
                      ("filter_e_grad", True), ("filter_c_grad", True), ("impl", LinearCrossEntropyImpl.CCE),
                      ("return_lse", False)]
    assert [(m.name, m.value) for m in LinearCrossEntropyImpl] == [
        ("CCE", 1), ("TORCH_COMPILE", 2), ("CCE_KAHAN_FULL_C", 3), ("CCE_KAHAN_FULL_E", 4), ("CCE_EXACT", 5),
        ("CCE_KAHAN_FULL_C_FULL_E", 6), ("CCE_KAHAN_FULL", 7)]


IMPLS = [m.name.lower() for m in LinearCrossEntropyImpl]


@pytest.mark.parametrize("filter_eps", ["auto", None, 1e-5, 0.0])
@pytest.mark.parametrize("impl", IMPLS + list(LinearCrossEntropyImpl))
def test_every_impl_and_filter_eps_cce_accepts_runs_unfiltered(impl, filter_eps):
    e, c, b, y = _inputs()
    loss = linear_cross_entropy(e, c, y, b, impl=impl, filter_eps=filter_eps, filter_e_grad=False,
                                accum_e_fp32=True, accum_c_fp32=True)
    torch.testing.assert_close(loss, reference(e, c, y, b)[0])


def test_cces_own_enum_members_are_accepted():
    foreign = enum.IntEnum("LinearCrossEntropyImpl", ["CCE", "TORCH_COMPILE", "CCE_EXACT"])
    e, c, b, y = _inputs()
    for member in foreign:
        torch.testing.assert_close(linear_cross_entropy(e, c, y, b, impl=member), reference(e, c, y, b)[0])


@pytest.mark.parametrize("filter_eps", ["fast", 1, True])
def test_filter_eps_rejected_where_cce_rejects_it(filter_eps):
    """CCE's ``_handle_eps``: a RuntimeError on "cce" and the presets that keep the user's
    value; "torch_compile" never reads it and presets that replace it never see it."""
    e, c, b, y = _inputs()
    for impl in ("cce",):
        with pytest.raises(RuntimeError, match="Unknown eps"):
            linear_cross_entropy(e, c, y, b, impl=impl, filter_eps=filter_eps)
    for impl in ("torch_compile", "cce_exact", "cce_kahan_full", "cce_kahan_full_c", "cce_kahan_full_e",
                 "cce_kahan_full_c_full_e"):
        linear_cross_entropy(e, c, y, b, impl=impl, filter_eps=filter_eps)


@pytest.mark.parametrize("impl", ["CCE", "triton", "", 3, None])
def test_unknown_impl_is_not_implemented(impl):
    e, c, b, y = _inputs()
    with pytest.raises(NotImplementedError, match="is not implemented"):
        linear_cross_entropy(e, c, y, b, impl=impl)


def test_argument_errors_are_cces():
    e, c, b, y = _inputs()
    for shift in (-1, 7, 8):
        with pytest.raises(ValueError, match=r"Shift must be in the range \[0, 7\)"):
            linear_cross_entropy(e, c, y, shift=shift)
    with pytest.raises(ValueError, match="Shift must be in the range"):
        linear_cross_entropy(e[:, :1], c, y[:, :1], shift=True)
    with pytest.raises(ValueError, match="Unknown reduction"):
        linear_cross_entropy(e, c, y, reduction="avg")
    with pytest.raises(ValueError, match="Unknown reduction"):
        linear_cross_entropy(e, c, y, reduction="avg", return_lse=True)
    with pytest.raises(ValueError, match="Bias has a different number of elements than c. 10 vs. 11."):
        linear_cross_entropy(e, c, y, b[:10])
    with pytest.raises(NotImplementedError, match="vocab_parallel_options"):
        linear_cross_entropy(e, c, y, vocab_parallel_options=object())
    with pytest.raises(ValueError, match="targets must have e's shape"):
        linear_cross_entropy(e, c, y[:, 1:])


def test_autocast_casts_inputs_to_the_autocast_dtype():
    e, c, b, y = _inputs(shape=(2, 8, 16), V=29, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, lse = linear_cross_entropy(e, c, y, b, shift=1, return_lse=True)
    want, want_lse = linear_cross_entropy(e.bfloat16(), c.bfloat16(), y, b.bfloat16(), shift=1, return_lse=True)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=0)
    assert _grads(loss, e)[0].dtype == torch.float32  # through the cast, to the float32 leaf


def test_module_forwards_to_the_function():
    e, c, b, y = _inputs()
    module = LinearCrossEntropy(softcap=2.0, reduction="sum", shift=True, return_lse=True, impl="torch_compile")
    loss, lse = module(e, c, y, b)
    want_loss, want_lse = reference(e, c, y, b, softcap=2.0, reduction="sum", shift=1)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(lse, want_lse)


def test_chunk_size_does_not_change_the_result():
    e, c, b, y = _inputs(shape=(2, 9, 5))
    for reduction in ("mean", "none"):
        one, one_lse = linear_cross_entropy(e, c, y, b, shift=2, reduction=reduction, return_lse=True)
        small, small_lse = linear_cross_entropy(e, c, y, b, shift=2, reduction=reduction, return_lse=True,
                                                chunk_size=4)
        torch.testing.assert_close(one, small, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(one_lse, small_lse, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------
# Part 2: upstream's tests (references rewritten)


def softcapping(logits, softcap):
    return torch.tanh(logits / softcap) * softcap


def compute_z_loss(lse, targets=None, shift=False, ignore_index=IGNORE_INDEX, reduction="mean"):
    """CCE's ``cut_cross_entropy.utils.compute_z_loss``: lse² over the valid positions of
    the (shifted) targets, "mean" divided by their count."""
    z_loss = lse.pow(2)
    count = None
    if targets is not None:
        shift = int(shift)
        if shift != 0:
            targets = targets[..., shift:]
        valid = targets != ignore_index
        z_loss = torch.where(valid, z_loss, 0.0)
        count = valid.count_nonzero()
    if reduction == "mean":
        return z_loss.sum() / (count if count is not None else z_loss.numel())
    return z_loss.sum() if reduction == "sum" else z_loss


def _upstream_loss(e, c, targets, bias, softcap, shift):
    N, T = targets.size()
    if shift != 0:
        e, targets, T = e[:, :-shift], targets[:, shift:], T - shift
    logits = e.flatten(0, -2) @ c.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcapping(logits, softcap)
    loss = F.cross_entropy(logits.float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return loss.view(N, T)


def _make(shape, dtype, bias_scale, invalids):
    """Upstream's inputs: e ~ N(0, 1/D), c ~ N(0, 1) with its first rows copied from e,
    targets with 20 % IGNORE_INDEX, e viewed as (4, N/4, D)."""
    N, V, D = shape
    e = torch.randn((N, D), dtype=dtype) / (D**0.5)
    c = torch.randn((V, D), dtype=dtype)
    c[0 : min(N, V) // 2] = e[0 : min(N, V) // 2]
    bias = torch.randn(V, dtype=dtype) * bias_scale if bias_scale else None
    targets = torch.randint(0, V, size=(N,))
    if invalids:
        inds = torch.randperm(len(targets))[0 : int(0.2 * len(targets))]
        targets[inds] = IGNORE_INDEX
    e = e.view(4, -1, D)
    return e, c, bias, targets.view(e.size()[0:-1])


LSE_ROUNDING = pytest.mark.xfail(strict=True, reason=(
    "documented difference: the core rounds each logit to the 16-bit input dtype (the matmul's output) "
    "before its float32 softcap and logsumexp; CCE's Triton kernel keeps the float32-accumulated logits, "
    "and upstream's `ref` also rounds tanh to 16 bits, so per element neither error bounds the other "
    "within the tolerance"))


SHAPES = [(256, 512, 128), (252, 507, 128), (252, 507, 123)]
DTYPES = [(torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)]


@pytest.mark.parametrize("impl", ["cce", "torch_compile"])
@pytest.mark.parametrize("dtype,error_tol", DTYPES)
@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("invalids", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_forward(impl, dtype, error_tol, softcap, has_bias, shift, invalids, shape, request):
    if (shape, dtype, softcap, shift, has_bias) == (SHAPES[0], torch.float16, 20.0, 2, True):
        request.applymarker(LSE_ROUNDING)  # a few float16 rows exceed ref's error by more than 1e-3
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    e, c, bias, targets = _make(shape, dtype, 0.01 if has_bias else 0.0, invalids)

    gt = _upstream_loss(e.float(), c.float(), targets, bias.float() if bias is not None else None, softcap, shift)
    torch.set_float32_matmul_precision("highest" if dtype == torch.float32 else "high")
    ref = _upstream_loss(e, c, targets, bias, softcap, shift)

    cce_loss = linear_cross_entropy(e, c, targets, bias=bias, softcap=softcap, shift=shift, reduction="none", impl=impl)

    expected_error = (gt - ref).abs()
    cce_error = (gt - cce_loss).abs()
    assert (cce_error <= (expected_error + error_tol)).all(), f"{(cce_error - expected_error).relu().max()=}"


def _upstream_grads(e, c, targets, bias, softcap, shift, reduction, z_loss, fp32=False):
    orig_e, orig_c, orig_bias = e, c, bias
    if bias is not None:
        bias.grad = None
    e.grad = c.grad = None
    if shift:
        e, targets = e[:, :-1], targets[:, 1:]
    e, targets = e.flatten(0, -2), targets.flatten()
    if fp32:
        e, c = e.float(), c.float()
        bias = bias.float() if bias is not None else None
    logits = e @ c.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcapping(logits, softcap)
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    if reduction == "sum":
        loss = loss / (targets != IGNORE_INDEX).count_nonzero()
    loss = loss.mean()
    if z_loss:
        loss = loss + compute_z_loss(torch.logsumexp(logits.float(), dim=-1), targets)
    loss.backward()
    grads = (orig_e.grad, orig_c.grad) + ((orig_bias.grad,) if bias is not None else ())
    return tuple(g.detach().clone() for g in grads)


@pytest.mark.parametrize("impl", ["cce", "torch_compile", "cce_exact"])
@pytest.mark.parametrize("dtype,error_tol", [(torch.float32, 5e-4), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("invalids", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("z_loss", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_backward(impl, dtype, error_tol, softcap, has_bias, shift, invalids, reduction, z_loss, shape):
    if impl != "cce" or shape != SHAPES[2] or not has_bias:
        pytest.skip("scaled down for CPU time (see the module docstring)")
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    e, c, bias, targets = _make(shape, dtype, 0.02 if has_bias else 0.0, invalids)
    if bias is not None:
        bias.requires_grad_(True)
    e.requires_grad_(True)
    c.requires_grad_(True)

    gt = _upstream_grads(e, c, targets, bias, softcap, shift, reduction, z_loss, fp32=True)
    torch.set_float32_matmul_precision("high")
    ref = _upstream_grads(e, c, targets, bias, softcap, shift, reduction, z_loss)

    e.grad = c.grad = None
    if bias is not None:
        bias.grad = None

    loss_lse = linear_cross_entropy(
        e, c, targets, bias=bias, softcap=softcap, shift=shift, reduction=reduction, impl=impl, return_lse=z_loss,
    )
    if z_loss:
        assert isinstance(loss_lse, tuple)
        loss, lse = loss_lse
    else:
        assert isinstance(loss_lse, torch.Tensor)
        loss, lse = loss_lse, None
    if reduction == "sum":
        loss = loss / (targets != IGNORE_INDEX).count_nonzero()
    loss = loss.mean()
    if z_loss:
        loss = loss + compute_z_loss(lse, targets, shift)
    loss.backward()

    cce = (e.grad, c.grad) + ((bias.grad,) if bias is not None else ())
    for i, (vgt, vref, vcce) in enumerate(zip(gt, ref, cce, strict=True)):
        expected_error, cce_error = (vgt - vref).abs().flatten(), (vgt - vcce).abs().flatten()
        assert (cce_error <= (expected_error + error_tol)).all(), (i, (cce_error - expected_error).relu().max())


@pytest.mark.parametrize(
    "compute_de,compute_dc,compute_dbias", [(True, False, True), (False, True, False), (False, False, True)]
)
def test_loss_partials(compute_de, compute_dc, compute_dbias):
    torch.manual_seed(0)
    dtype = torch.bfloat16
    N, V, D = (256, 512, 128)
    e = torch.randn((N, D), dtype=dtype, requires_grad=False) / (D**0.5)
    c = torch.randn((V, D), dtype=dtype, requires_grad=False)
    bias = torch.randn(V, dtype=dtype, requires_grad=False) * 0.01
    c[0 : min(N, V) // 2] = e[0 : min(N, V) // 2]
    targets = torch.randint(0, V, size=(N,))
    e = e.view(4, -1, D)
    targets = targets.view(e.size()[0:-1])
    e.requires_grad_(compute_de)
    c.requires_grad_(compute_dc)
    bias.requires_grad_(compute_dbias)

    e.grad = c.grad = bias.grad = None
    loss = linear_cross_entropy(e, c, targets, bias=bias, reduction="mean")
    loss.backward()

    assert (e.grad is not None) == compute_de
    assert (c.grad is not None) == compute_dc
    assert (bias.grad is not None) == compute_dbias


def _upstream_lse(e, c, bias, softcap):
    logits = e @ c.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcapping(logits, softcap)
    return torch.logsumexp(logits.float(), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.float16, id="float16"),
                                   pytest.param(torch.bfloat16, id="bfloat16")])
@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("shape", [(256, 512, 128), (255, 507, 128), (255, 507, 123)])
def test_lse(dtype, softcap, has_bias, shape, request):
    if softcap is not None and dtype != torch.float32:
        request.applymarker(LSE_ROUNDING)
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    N, V, D = shape
    e = torch.randn((N, D), dtype=dtype) / (D**0.5)
    c = torch.randn((V, D), dtype=dtype)
    c[0 : min(N, V) // 2] = e[0 : min(N, V) // 2]
    bias = torch.randn(V, dtype=dtype) * 0.02 if has_bias else None

    gt = _upstream_lse(e.float(), c.float(), bias.float() if bias is not None else None, softcap)
    torch.set_float32_matmul_precision("highest" if dtype == torch.float32 else "high")
    ref = _upstream_lse(e, c, bias, softcap)

    # upstream: cce_lse_forward_kernel(e, c, bias, softcap=softcap); the lse needs no targets
    targets = torch.zeros(N, dtype=torch.int64)
    cce_lse = linear_cross_entropy(e, c, targets, bias, softcap=softcap, return_lse=True)[1]

    expected_error = (gt - ref).abs()
    cce_error = (gt - cce_lse).abs()
    assert (cce_error <= (expected_error + 1e-5)).all(), f"{(cce_error - expected_error).relu().max()=}"


@pytest.mark.skip(reason="vocab_parallel_options is not supported (documented difference); upstream spawns 4 "
                         "processes that each hold a vocabulary shard of c")
@pytest.mark.parametrize("impl", ["torch_compile", "cce_exact"])
@pytest.mark.parametrize("dtype,error_tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("nprocs", [4])
@pytest.mark.parametrize("invalids", [False, True])
@pytest.mark.parametrize("z_loss", [True, False])
def test_vocab_parallel(impl, dtype, error_tol, nprocs, invalids, z_loss):
    raise AssertionError("skipped")
