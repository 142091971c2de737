"""Liger-Kernel's own tests, ported onto the drop-ins of :mod:`smoothloss.torch_liger`.

Upstream: linkedin/Liger-Kernel at commit ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c,
``test/transformers/test_fused_linear_cross_entropy.py`` (every test function, every
parametrisation) and ``test/transformers/test_cross_entropy.py`` (a subset, the ``test_ce_*`` cases at
the end of this module, on ``LigerCrossEntropyLoss``/``liger_cross_entropy``). The calls are written
as upstream writes them (the same keywords, the same positional orders); upstream's
references (``TorchLMHeadCE``/``CrossEntropyWithZLoss`` in float32, or Liger's own
``LigerFusedLinearCrossEntropyFunction``) are replaced by one float64 reference,
:func:`reference`, written plainly here: dense logits ``h @ W.T + b``, the soft cap,
``F.cross_entropy`` in float64 with the class weights, ``z·lse²`` over the valid rows
(mean over the valid count, as upstream's ``CrossEntropyWithZLoss``), the argmax
accuracy, and the detached label probability for token scaling.

Scaled down for CPU time: upstream's large shape ``(B, T, H, V) = (8, 128, 1024, 4096)``
is ``(2, 16, 64, 256)`` here; every other shape is upstream's. Upstream's tolerances are
kept. The tests comparing with ``LigerFusedLinearCrossEntropyFunction.apply`` compare
with the float64 reference instead (positional call kept, on the drop-in).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smoothloss.torch import (
    CrossEntropyOutput,
    LigerCrossEntropyLoss,
    LinearCrossEntropyLoss,
    liger_cross_entropy,
)
from smoothloss.torch import linear_cross_entropy as liger_fused_linear_cross_entropy

BIG = (2, 16, 64, 256)  # upstream: (8, 128, 1024, 4096)
SHAPES = [BIG, (4, 47, 31, 123)]


def reference(x, w, b, y, ce_weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0,
              reduction="mean", softcap=None, use_token_scaling=False):
    """Float64 ``(loss, z_loss, token_accuracy, predicted_tokens)`` of Liger's definition."""
    logits = x.double() @ w.double().T
    if b is not None:
        logits = logits + b.double()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    cw = None if ce_weight is None else ce_weight.double()
    valid = y != ignore_index
    ce = F.cross_entropy(logits, y, weight=cw, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction="none")
    lse = torch.logsumexp(logits, dim=-1)
    z = torch.where(valid, lse_square_scale * lse * lse, 0.0)
    if use_token_scaling:
        p_y = torch.softmax(logits.detach(), -1).gather(1, torch.where(valid, y, 0)[:, None])[:, 0]
        ce, z = ce * p_y, z * p_y
    pred = logits.argmax(-1)
    acc = ((pred == y) & valid).double()
    if reduction == "none":
        return ce + z, z, acc, torch.where(valid, pred, -1)
    den_ce = valid.sum() if cw is None else cw[y[valid]].sum()
    if reduction == "sum":
        return ce.sum() + z.sum(), z.sum(), acc.sum() / valid.sum(), torch.where(valid, pred, -1)
    z_mean = z.sum() / valid.sum()
    return ce.sum() / den_ce + z_mean, z_mean, acc.sum() / valid.sum(), torch.where(valid, pred, -1)


def close(actual, expected, atol, rtol):
    assert actual.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int64), actual.dtype
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def _grads(loss, tensors, grad_output):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None], grad_output)


def _head_grads(x, head):
    return [g for g in (x.grad, head.lin.weight.grad, None if head.lin.bias is None else head.lin.bias.grad)
            if g is not None]


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]


def _ignored(target, ignore_index):
    n = target.numel()
    k = torch.randint(1, n // 2, (1,)).item()
    target[torch.randperm(n)[:k]] = ignore_index
    return target


class LigerLMHeadCE(torch.nn.Module):
    """Upstream's ``LigerLMHeadCE``: an ``nn.Linear`` head and the module, keywords as upstream."""

    def __init__(self, H, V, dtype, ce_weight=None, bias=False, ignore_index=-100, lse_square_scale=0.0,
                 label_smoothing=0.0, reduction="mean", softcap=None, return_z_loss=False, accum_dtype=None):
        super().__init__()
        self.lin = torch.nn.Linear(in_features=H, out_features=V, bias=bias, dtype=dtype)
        self.ce_loss = LinearCrossEntropyLoss(
            ce_weight=ce_weight, ignore_index=ignore_index, lse_square_scale=lse_square_scale,
            label_smoothing=label_smoothing, reduction=reduction, softcap=softcap, return_z_loss=return_z_loss,
            accum_dtype=accum_dtype,
        )

    def forward(self, x, y):
        return self.ce_loss(self.lin.weight, x, y, self.lin.bias)


CORRECTNESS_DTYPES = [
    ("mean", 1.0, torch.bfloat16, 5e-3, 5e-2),
    ("mean", 1.0, torch.float32, 1e-5, 5e-4),
    ("sum", 1.0, torch.bfloat16, 5e-0, 5e1),
    ("sum", 1.0, torch.float32, 1e-3, 5e-2),
]
OPTION_ROWS = [
    (False, 0, -100, 0, None, False, None),
    (True, 0.1, 42, 1e-4, 30.0, True, torch.float32),
]
OPTION_NAMES = "has_ce_weight, label_smoothing, ignore_index, lse_square_scale, softcap, return_z_loss, accum_dtype"


def _head_case(B, T, H, V, dtype, bias, has_ce_weight, ignore_index, **options):
    torch.manual_seed(B * 1000 + V)
    ce_weight = torch.rand(V, dtype=torch.float32) if has_ce_weight else None
    head = LigerLMHeadCE(H=H, V=V, bias=bias, ce_weight=ce_weight, ignore_index=ignore_index, dtype=dtype, **options)
    head.lin.weight.data = torch.rand(V, H, dtype=dtype)
    if bias:
        head.lin.bias.data = torch.rand(V, dtype=dtype)
    x = (torch.randn(B * T, H, dtype=dtype)).requires_grad_(True)
    target = _ignored(torch.randint(0, V, (B * T,), dtype=torch.long), ignore_index)
    return head, ce_weight, x, target


@pytest.mark.parametrize("B, T, H, V", SHAPES)
@pytest.mark.parametrize("reduction, scalar, dtype, atol, rtol", CORRECTNESS_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(OPTION_NAMES, OPTION_ROWS)
def test_correctness(B, T, H, V, scalar, dtype, bias, has_ce_weight, lse_square_scale, label_smoothing,
                     ignore_index, reduction, softcap, return_z_loss, accum_dtype, atol, rtol):
    head, ce_weight, x, target = _head_case(
        B, T, H, V, dtype, bias, has_ce_weight, ignore_index, lse_square_scale=lse_square_scale,
        label_smoothing=label_smoothing, reduction=reduction, softcap=softcap, return_z_loss=return_z_loss,
        accum_dtype=accum_dtype,
    )
    xr, wr, br = _leaves(x, head.lin.weight, head.lin.bias)
    ref, z_ref, _, _ = reference(xr, wr, br, target, ce_weight, ignore_index, lse_square_scale, label_smoothing,
                                 reduction, softcap)
    result = head(x, target)
    if return_z_loss:
        assert isinstance(result, CrossEntropyOutput)
        loss = result.loss
        close(result.z_loss, z_ref, atol, rtol)
    else:
        assert isinstance(result, torch.Tensor)
        loss = result
    close(loss, ref, atol, rtol)
    loss.backward(torch.ones_like(loss))
    for got, want in zip(_head_grads(x, head), _grads(ref, [xr, wr, br], None), strict=True):
        close(got, want, atol, rtol)


@pytest.mark.parametrize("B, T, H, V", SHAPES)
@pytest.mark.parametrize("reduction, scalar, dtype, atol, rtol", CORRECTNESS_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(OPTION_NAMES, OPTION_ROWS)
def test_correctness_with_forward_only(B, T, H, V, scalar, dtype, bias, has_ce_weight, lse_square_scale,
                                       label_smoothing, ignore_index, reduction, softcap, return_z_loss,
                                       accum_dtype, atol, rtol):
    head, ce_weight, x, target = _head_case(
        B, T, H, V, dtype, bias, has_ce_weight, ignore_index, lse_square_scale=lse_square_scale,
        label_smoothing=label_smoothing, reduction=reduction, softcap=softcap, return_z_loss=return_z_loss,
        accum_dtype=accum_dtype,
    )
    with torch.no_grad():
        ref, z_ref, _, _ = reference(x, head.lin.weight, head.lin.bias, target, ce_weight, ignore_index,
                                     lse_square_scale, label_smoothing, reduction, softcap)
        result = head(x, target)
        loss = result.loss if return_z_loss else result
        close(loss, ref, atol, rtol)
        if return_z_loss:
            close(result.z_loss, z_ref, atol, rtol)
    with pytest.raises(RuntimeError, match="does not require grad"):
        loss.backward(torch.rand_like(loss))


@pytest.mark.parametrize("B, T, H, V", [(2, 2, 8, 8), (9, 7, 41, 41)])
@pytest.mark.parametrize("scalar, dtype, atol, rtol", [(1.0, torch.bfloat16, 5e-3, 5e-2), (1.0, torch.float32, 1e-5, 5e-4)])
@pytest.mark.parametrize("ce_weight", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_correctness_functional(B, T, H, V, scalar, dtype, bias, ce_weight, atol, rtol):
    torch.manual_seed(B * 100 + V)
    x1 = (torch.randn(B * T, H, dtype=dtype) * scalar).requires_grad_(True)
    target = torch.randint(0, V, (B * T,), dtype=torch.long)
    weight = torch.randn(V, H, dtype=dtype)
    bias = torch.randn(V, dtype=dtype) if bias else None
    # upstream draws randn class weights; their sum over the labels can be near 0, which
    # makes the mean ill-conditioned in bf16: positive weights keep the case about the API
    ce_weight = torch.rand(V) + 0.5 if ce_weight else None
    result = liger_fused_linear_cross_entropy(
        input=x1, weight=weight, target=target, bias=bias, ce_weight=ce_weight, ignore_index=-100,
        lse_square_scale=1e-4, label_smoothing=0.1, reduction="mean", softcap=30.0, return_z_loss=True,
        accum_dtype=torch.float32,
    )
    assert isinstance(result, CrossEntropyOutput)
    # upstream's second call, LigerFusedLinearCrossEntropyFunction.apply, positionally
    x2 = x1.detach().clone().requires_grad_(True)
    y2, z2, acc2, pred2 = liger_fused_linear_cross_entropy(
        x2, weight, target, bias, ce_weight, -100, 1e-4, 0.1, "mean", 30.0, True, torch.float32, False, False, False
    ).__dict__.values()
    assert acc2 is None and pred2 is None
    xr = x1.detach().clone().requires_grad_(True)
    ref, z_ref, _, _ = reference(xr, weight, bias, target, ce_weight, -100, 1e-4, 0.1, "mean", 30.0)
    for y, z in ((result.loss, result.z_loss), (y2, z2)):
        close(y, ref, atol, rtol)
        close(z, z_ref, atol, rtol)
    grad_output = torch.randn_like(result.loss)
    result.loss.backward(grad_output)
    y2.backward(grad_output)
    (g_ref,) = _grads(ref, [xr], grad_output.double())
    close(x1.grad, g_ref, atol, rtol)
    close(x2.grad, g_ref, atol, rtol)


@pytest.mark.parametrize("B, T, H, V", SHAPES)
@pytest.mark.parametrize("reduction, scalar, dtype, atol, rtol", CORRECTNESS_DTYPES[:2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("return_token_accuracy", [True, False])
def test_correctness_with_token_accuracy(B, T, H, V, scalar, dtype, bias, return_token_accuracy, reduction,
                                         atol, rtol):
    head, _, x, target = _head_case(B, T, H, V, dtype, bias, False, -100, reduction=reduction)
    xr, wr, br = _leaves(x, head.lin.weight, head.lin.bias)
    ref, _, acc_ref, _ = reference(xr, wr, br, target, reduction=reduction)
    result = liger_fused_linear_cross_entropy(
        input=x, weight=head.lin.weight, target=target, bias=head.lin.bias if bias else None, ignore_index=-100,
        reduction=reduction, return_token_accuracy=return_token_accuracy,
    )
    if return_token_accuracy:
        assert isinstance(result, CrossEntropyOutput)
        loss = result.loss
        assert result.token_accuracy.dtype == torch.float32
        # the argmax of bf16 logits may differ from float64's on near-ties: upstream's
        # reference takes the argmax of the same low-precision logits
        with torch.no_grad():
            logits = x @ head.lin.weight.t() + (head.lin.bias if bias else 0)
            mask = target != -100
            expected = ((logits.argmax(-1) == target) & mask).sum().float() / mask.sum().float()
        close(result.token_accuracy, expected, atol, rtol)
        close(result.token_accuracy, acc_ref, 1.0 / mask.sum().item() + 1e-6, 0.0)
    else:
        assert not isinstance(result, CrossEntropyOutput)
        loss = result
    close(loss, ref, atol, rtol)
    loss.backward(torch.ones_like(loss))
    for got, want in zip(_head_grads(x, head), _grads(ref, [xr, wr, br], None), strict=True):
        close(got, want, atol, rtol)


@pytest.mark.parametrize("B, T, H, V", SHAPES)
@pytest.mark.parametrize("bias, cast_dtype, atol, rtol", [
    (True, torch.bfloat16, 5e-3, 5e-2), (True, torch.float16, 5e-3, 5e-2),
    (False, torch.bfloat16, 5e-3, 5e-2), (False, torch.float16, 5e-3, 5e-2),
])
@pytest.mark.parametrize("accum_dtype", [None, torch.float32])
def test_amp(B, T, H, V, bias, cast_dtype, accum_dtype, atol, rtol):
    torch.manual_seed(V)
    head = LigerLMHeadCE(H=H, V=V, bias=bias, label_smoothing=0.0, reduction="mean", dtype=torch.float32,
                         accum_dtype=accum_dtype)
    head.lin.weight.data = torch.rand(V, H)
    x = torch.randn(B * T, H).requires_grad_(True)
    target = torch.randint(0, V, (B * T,), dtype=torch.long)
    with torch.autocast(device_type="cpu", dtype=cast_dtype):
        loss = head(x, target)
    assert loss.dtype == torch.float32
    # the reference sees what autocast's F.linear would: the operands rounded to cast_dtype
    xr, wr, br = _leaves(x, head.lin.weight, head.lin.bias)
    rounded = [None if t is None else t.to(cast_dtype).double() for t in (xr, wr, br)]
    ref, _, _, _ = reference(*rounded, target)
    close(loss, ref, atol, rtol)
    loss.backward()
    for got, want in zip([x.grad, head.lin.weight.grad], _grads(ref, [xr, wr], None)):
        close(got, want, atol, rtol)


def _scaling_case(V=16, n=8, H=8):
    torch.manual_seed(n + V)
    return torch.randn(n, H), torch.randint(0, V, (n,)), torch.randn(V, H), torch.randn(V)


def test_correctness_token_scaling():
    x0, target, weight, bias = _scaling_case()
    x = x0.clone().requires_grad_(True)
    loss = liger_fused_linear_cross_entropy(input=x, weight=weight, target=target, bias=bias, ignore_index=-100,
                                            reduction="none", use_token_scaling=True)
    xr = x0.clone().double().requires_grad_(True)
    ref, _, _, _ = reference(xr, weight, bias, target, reduction="none", use_token_scaling=True)
    close(loss, ref, 1e-4, 1e-4)
    loss.sum().backward()
    close(x.grad, _grads(ref.sum(), [xr], None)[0], 1e-4, 1e-4)


def test_correctness_token_scaling_consistency():
    x0, target, weight, bias = _scaling_case()
    x1, x2 = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    functional = liger_fused_linear_cross_entropy(input=x1, weight=weight, target=target, bias=bias,
                                                  ignore_index=-100, reduction="sum", use_token_scaling=True)
    module = LinearCrossEntropyLoss(ignore_index=-100, reduction="sum", use_token_scaling=True)(weight, x2, target, bias)
    close(functional, module, 1e-6, 1e-6)
    functional.backward()
    module.backward()
    close(x1.grad, x2.grad, 1e-6, 1e-6)


@pytest.mark.parametrize("api", ["functional", "module"])
def test_correctness_token_scaling_sum(api):
    """Upstream's test_correctness_token_scaling_functional and _module (one each)."""
    x0, target, weight, bias = _scaling_case()
    x = x0.clone().requires_grad_(True)
    if api == "functional":
        y = liger_fused_linear_cross_entropy(input=x, weight=weight, target=target, bias=bias, ignore_index=-100,
                                             lse_square_scale=0.0, label_smoothing=0.0, reduction="sum",
                                             softcap=None, return_z_loss=False, accum_dtype=None,
                                             use_token_scaling=True)
    else:
        y = LinearCrossEntropyLoss(ignore_index=-100, reduction="sum", use_token_scaling=True)(weight, x, target, bias)
    xr = x0.clone().double().requires_grad_(True)
    ref, _, _, _ = reference(xr, weight, bias, target, reduction="sum", use_token_scaling=True)
    close(y, ref, 1e-5, 1e-5)
    y.backward()
    close(x.grad, _grads(ref, [xr], None)[0], 1e-5, 1e-5)


@pytest.mark.parametrize("return_z_loss, return_token_accuracy", [(False, False), (True, False), (False, True),
                                                                  (True, True)])
def test_liger_fused_linear_cross_entropy_structured_output(return_z_loss, return_token_accuracy):
    hidden_states = torch.tensor([[0.2, -0.1], [1.0, 0.5], [-0.3, 0.7]], requires_grad=True)
    weight = torch.tensor([[0.5, -0.4], [-0.2, 0.3], [0.1, 0.6]])
    bias = torch.tensor([0.1, -0.2, 0.05])
    targets = torch.tensor([0, 1, 2])
    result = liger_fused_linear_cross_entropy(input=hidden_states, weight=weight, target=targets, bias=bias,
                                              return_z_loss=return_z_loss, return_token_accuracy=return_token_accuracy)
    module_result = LinearCrossEntropyLoss(return_z_loss=return_z_loss, return_token_accuracy=return_token_accuracy)(
        weight, hidden_states, targets, bias
    )
    ref, z_ref, acc_ref, _ = reference(hidden_states.detach(), weight, bias, targets)
    for out in (result, module_result):
        if not return_z_loss and not return_token_accuracy:
            assert isinstance(out, torch.Tensor)
            close(out, ref, 1e-6, 0.0)
            continue
        assert isinstance(out, CrossEntropyOutput)
        close(out.loss, ref, 1e-6, 0.0)
        assert out.predicted_tokens is None
        # lse_square_scale is 0: the z-loss is returned, and is 0
        assert (out.z_loss is None) == (not return_z_loss)
        if return_z_loss:
            close(out.z_loss, z_ref, 0.0, 0.0)
        assert (out.token_accuracy is None) == (not return_token_accuracy)
        if return_token_accuracy:
            close(out.token_accuracy, acc_ref, 1e-6, 0.0)
    (result if isinstance(result, torch.Tensor) else result.loss).backward()
    assert torch.equal(hidden_states.grad == hidden_states.grad, torch.ones(3, 2, dtype=torch.bool))


def test_token_scaling_with_ignore_index():
    torch.manual_seed(0)
    H, V = 8, 1000
    target = torch.tensor([0, 100, -100, 500, -100, 999])
    x = torch.randn(6, H, requires_grad=True)
    weight, bias = torch.randn(V, H), torch.randn(V)
    loss = liger_fused_linear_cross_entropy(input=x, weight=weight, target=target, bias=bias, ignore_index=-100,
                                            reduction="sum", use_token_scaling=True)
    xr = x.detach().double().requires_grad_(True)
    ref, _, _, _ = reference(xr, weight, bias, target, reduction="sum", use_token_scaling=True)
    assert loss.shape == ()
    close(loss, ref, 1e-5, 1e-5)
    loss.backward()
    close(x.grad, _grads(ref, [xr], None)[0], 1e-5, 1e-5)


@pytest.mark.parametrize("B, T, H, V", SHAPES)
@pytest.mark.parametrize("reduction, dtype, atol, rtol", [("mean", torch.bfloat16, 5e-3, 5e-2),
                                                          ("mean", torch.float32, 1e-5, 5e-4)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_correctness_with_predicted_tokens(B, T, H, V, reduction, dtype, bias, ignore_index, atol, rtol):
    torch.manual_seed(42)
    weight = torch.randn(V, H, dtype=dtype)
    bias_tensor = torch.randn(V, dtype=dtype) if bias else None
    x = torch.randn(B * T, H, dtype=dtype, requires_grad=True)
    target = torch.randint(0, V, (B * T,), dtype=torch.long)
    target[torch.randperm(B * T)[: B * T // 4]] = ignore_index
    result = liger_fused_linear_cross_entropy(input=x, weight=weight, target=target, bias=bias_tensor,
                                              ignore_index=ignore_index, reduction=reduction,
                                              return_predicted_tokens=True)
    assert isinstance(result, CrossEntropyOutput)
    assert result.predicted_tokens.shape == (B * T,) and result.predicted_tokens.dtype == torch.int64
    valid = target != ignore_index
    with torch.no_grad():  # upstream's check: the predicted token's logit is the row maximum
        logits = x.float() @ weight.float().t() + (0 if bias_tensor is None else bias_tensor.float())
        picked = logits[valid].gather(1, result.predicted_tokens[valid][:, None])[:, 0]
    close(picked, logits[valid].max(-1).values, atol, rtol)
    assert torch.all(result.predicted_tokens[~valid] == -1)
    ref, _, _, _ = reference(x.detach(), weight, bias_tensor, target, ignore_index=ignore_index)
    close(result.loss, ref, atol, rtol)
    result.loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("B, T, H, V", [(2, 16, 32, 64), (1, 32, 64, 128)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-4, 1e-4)])
def test_correctness_reduction_none_per_token_grad_output(B, T, H, V, bias, dtype, atol, rtol):
    torch.manual_seed(42)
    x, w = torch.randn(B * T, H) * 0.1, torch.randn(V, H) * 0.1
    b = torch.randn(V) * 0.1 if bias else None
    target = torch.randint(0, V, (B * T,))
    grad_output = torch.rand(B * T) + 0.5
    x1, w1, b1 = _leaves(x, w, b)
    # upstream: LigerFusedLinearCrossEntropyFunction.apply(x, w, target, b, None, -100, 0.0, 0.0, "none", ...)
    loss = liger_fused_linear_cross_entropy(x1, w1, target, b1, None, -100, 0.0, 0.0, "none", None, False, None,
                                            False, False, False)
    xr, wr, br = _leaves(x, w, b)
    ref, _, _, _ = reference(xr, wr, br, target, reduction="none")
    close(loss, ref, atol, rtol)
    loss.backward(grad_output)
    for got, want in zip([g for g in (x1.grad, w1.grad, None if b1 is None else b1.grad) if g is not None], _grads(ref, [xr, wr, br], grad_output.double())):
        close(got, want, atol, rtol)


def test_positional_order_is_liger():
    """``LinearCrossEntropyLoss(None, -100)`` reads -100 as ignore_index (Liger's order)."""
    loss_fn = LinearCrossEntropyLoss(None, -100, 1e-4, 0.1, "sum", 30.0, True)
    assert (loss_fn.ce_weight, loss_fn.ignore_index, loss_fn.lse_square_scale, loss_fn.label_smoothing) == (
        None, -100, 1e-4, 0.1)
    assert (loss_fn.reduction, loss_fn.softcap, loss_fn.return_z_loss) == ("sum", 30.0, True)
    with pytest.raises(TypeError):
        LinearCrossEntropyLoss(None, -100, 0.0, 0.0, "mean", None, False, None, False, False, False, "uniform")


def test_mean_over_no_valid_row_is_zero():
    """A mean over zero valid rows is 0 with a zero gradient (Liger's kernel also sums an
    all-zero row loss; PyTorch's weighted mean would be 0/0 = NaN)."""
    x = torch.randn(3, 4, requires_grad=True)
    loss = liger_fused_linear_cross_entropy(x, torch.randn(5, 4), torch.full((3,), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(3, 4))


def test_out_of_range_label_raises():
    """Documented difference: a label outside [0, V) raises ValueError (Liger's kernel reads
    out of bounds)."""
    with pytest.raises(ValueError):
        liger_fused_linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 5, 1]))


# --- test/transformers/test_cross_entropy.py: LigerCrossEntropyLoss / liger_cross_entropy --------------
# Shapes scaled down: upstream's (2, 4096, 32000) is (2, 16, 512), (3, 423, 32000) is (3, 23, 257).
CE_SHAPES = [(2, 16, 512), (3, 23, 257)]
CE_DTYPES = [(1.0, torch.bfloat16, 1e-8, 5e-2), (1.0, torch.float32, 1e-8, 1e-6)]


def _ce_case(B, T, V, dtype, ignore_index=None, scalar=1.0):
    torch.manual_seed(0)
    x = (torch.randn(B * T, V, dtype=dtype) * scalar).requires_grad_(True)
    target = torch.randint(0, V, (B * T,), dtype=torch.long)
    return x, target if ignore_index is None else _ignored(target, ignore_index)


def _ce_check(loss_fn, x, target, atol, rtol, return_z_loss=False, weight=None, ignore_index=-100, **ref_options):
    xr = x.detach().double().requires_grad_(True)
    eye = torch.eye(x.shape[-1], dtype=torch.float64)
    ref, z_ref, _, _ = reference(xr, eye, None, target, weight, ignore_index, **ref_options)
    out = loss_fn(x, target)
    if return_z_loss:
        assert isinstance(out, CrossEntropyOutput)
        close(out.z_loss, z_ref, atol, rtol)
        out = out.loss
    close(out, ref, atol, rtol)
    out.backward(torch.ones_like(out))
    close(x.grad, _grads(ref, [xr], torch.ones_like(ref))[0], atol, rtol)


@pytest.mark.parametrize("B, T, V", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("scalar, dtype, atol, rtol", CE_DTYPES)
def test_ce_correctness(B, T, V, scalar, dtype, reduction, atol, rtol):
    x, target = _ce_case(B, T, V, dtype, scalar=scalar)
    _ce_check(LigerCrossEntropyLoss(reduction=reduction), x, target, atol, rtol, reduction=reduction)


@pytest.mark.parametrize("B, T, V", [(2, 2, 8), (9, 7, 41)])
@pytest.mark.parametrize("scalar, dtype, atol, rtol", CE_DTYPES)
def test_ce_correctness_functional(B, T, V, scalar, dtype, atol, rtol):
    x, target = _ce_case(B, T, V, dtype, scalar=scalar)
    # upstream: liger_cross_entropy(x, target, None, ignore_index=0, reduction="mean", ...) style keywords
    loss_fn = lambda x, y: liger_cross_entropy(x, y, None, None, 0, None, "mean", 0.1, 1e-4, 30.0, True)
    _ce_check(loss_fn, x, target, atol, rtol, True, None, 0, lse_square_scale=1e-4, label_smoothing=0.1,
              softcap=30.0)


@pytest.mark.parametrize("B, T, V, ignore_index", [(2, 16, 512, 2), (3, 23, 257, -123)])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("scalar, dtype, atol, rtol", CE_DTYPES)
@pytest.mark.parametrize("label_smoothing, softcap, lse_square_scale, weighted", [
    (0.0, None, 0.0, False),  # test_correctness_with_ignore_index
    (0.1, None, 0.0, False),  # ..._with_label_smoothing_with_ignore_index_once
    (0.0, 30.0, 0.0, False),  # ..._with_softcap_once
    (0.1, None, 1e-4, False),  # ..._with_z_loss_with_other_params_once
    (0.1, 30.0, 1e-4, True),  # ..._with_weight_with_other_params_once
])
def test_ce_correctness_with_options(B, T, V, ignore_index, reduction, scalar, dtype, atol, rtol, label_smoothing,
                                     softcap, lse_square_scale, weighted):
    x, target = _ce_case(B, T, V, dtype, ignore_index, scalar)
    weight = torch.rand(V, dtype=torch.float32) if weighted else None
    return_z_loss = lse_square_scale != 0.0
    loss_fn = LigerCrossEntropyLoss(weight=weight, ignore_index=ignore_index, lse_square_scale=lse_square_scale,
                                    label_smoothing=label_smoothing, reduction=reduction, softcap=softcap,
                                    return_z_loss=return_z_loss)
    _ce_check(loss_fn, x, target, atol, rtol, return_z_loss, weight, ignore_index, lse_square_scale=lse_square_scale,
              label_smoothing=label_smoothing, reduction=reduction, softcap=softcap)


@pytest.mark.parametrize("B, T, V, ignore_index", [(2, 16, 512, 2), (3, 23, 257, -123)])
def test_ce_correctness_with_out_of_bounds_target_once(B, T, V, ignore_index):
    """Upstream expects ``AssertionError("... out of bounds ...")``; the documented
    difference is a ``ValueError`` naming the range."""
    x, target = _ce_case(B, T, V, torch.bfloat16, ignore_index)
    target[torch.randperm(B * T)[:3]] = torch.randint(V, 2 * V, (3,))
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, {V}\)"):
        LigerCrossEntropyLoss(ignore_index=ignore_index)(x, target)


@pytest.mark.parametrize("return_z_loss, return_token_accuracy, return_predicted_tokens",
                         [(False, False, False), (True, True, True), (False, True, False), (False, False, True)])
def test_liger_cross_entropy_structured_output(return_z_loss, return_token_accuracy, return_predicted_tokens):
    x = torch.tensor([[2.0, 0.5, 0.1], [0.1, 0.3, 1.5], [0.2, 2.2, 0.1]], requires_grad=True)
    target = torch.tensor([0, 1, -100])
    out = liger_cross_entropy(x, target, return_z_loss=return_z_loss, return_token_accuracy=return_token_accuracy,
                              return_predicted_tokens=return_predicted_tokens)
    expected = F.cross_entropy(x.detach(), target)
    if not (return_z_loss or return_token_accuracy or return_predicted_tokens):
        assert isinstance(out, torch.Tensor)
        close(out, expected, 1e-6, 0.0)
        return
    assert isinstance(out, CrossEntropyOutput)
    close(out.loss, expected, 1e-6, 0.0)
    assert (out.z_loss is None) == (not return_z_loss)
    if return_token_accuracy:  # row 0 right, row 1 wrong (argmax 2), row 2 ignored
        close(out.token_accuracy, torch.tensor(0.5), 0.0, 0.0)
    if return_predicted_tokens:
        assert torch.equal(out.predicted_tokens, torch.tensor([0, 2, -1]))
