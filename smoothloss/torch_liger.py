"""Drop-ins for Liger-Kernel's fused linear cross-entropy, on any device.

``linear_cross_entropy`` and ``LinearCrossEntropyLoss`` take Liger-Kernel 0.8's
``liger_fused_linear_cross_entropy`` / ``LigerFusedLinearCrossEntropyLoss`` arguments in
Liger's positional order with Liger's defaults, and return what Liger returns: the loss,
or a :class:`CrossEntropyOutput` (``loss, z_loss, token_accuracy, predicted_tokens``)
when any of ``return_z_loss``, ``return_token_accuracy``, ``return_predicted_tokens`` is
set. The library's extras (``convention``, ``chunk_size``, ``kl``) are keyword-only.

The loss is :func:`smoothloss.linear_cross_entropy` (``ce_weight`` is its
``class_weight``); the metrics and token-scaling factors are the core's
:func:`smoothloss._linear.row_statistics`, computed without autodiff, as Liger detaches
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import smoothloss
from smoothloss import _linear
from smoothloss._torch_support import autocast_enabled as _autocast_enabled
from smoothloss._torch_support import check_tensor as _check_tensor
from smoothloss._torch_support import no_autocast as _no_autocast
from smoothloss._torch_support import wide as _wide
from smoothloss.backends import framework

__all__ = [
    "CrossEntropyOutput", "LigerCrossEntropyLoss", "LinearCrossEntropyLoss", "liger_cross_entropy",
    "linear_cross_entropy",
]


@dataclass
class CrossEntropyOutput:
    """Liger's ``CrossEntropyOutput``: the loss and the outputs asked for (None otherwise)."""

    loss: Tensor
    z_loss: Tensor | None = None
    token_accuracy: Tensor | None = None
    predicted_tokens: Tensor | None = None


def _check_flags(accum_dtype: Any, **flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if accum_dtype is not None and not (isinstance(accum_dtype, torch.dtype) and accum_dtype.is_floating_point):
        raise ValueError(f"accum_dtype must be None or a floating torch.dtype, got {accum_dtype!r}")


def _liger_z(target: Tensor, ce_weight: Tensor | None, ignore_index: int, z: float, reduction: str) -> float:
    """The z-loss coefficient that gives Liger's mean: Liger divides the weighted
    cross-entropy by Σ_valid w_y but the z-loss by the valid count, and the core divides
    the whole row loss by Σ_valid w_y, so the z-term is scaled by Σ_valid w_y / count."""
    if ce_weight is None or z == 0.0 or reduction != "mean":
        return z
    valid = target != ignore_index
    count = int(valid.sum())
    return z if count == 0 else z * float(ce_weight.double()[target[valid]].sum()) / count


def _compute(
    input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None, ce_weight: Tensor | None, ignore_index: int,
    lse_square_scale: float, label_smoothing: float, reduction: str, softcap: float | None, return_z_loss: bool,
    use_token_scaling: bool, return_token_accuracy: bool, return_predicted_tokens: bool, options: dict[str, Any],
) -> Any:
    z = _liger_z(target, ce_weight, ignore_index, lse_square_scale, reduction)
    common = dict(
        bias=bias, ignore_index=ignore_index, label_smoothing=label_smoothing, softcap=softcap,
        class_weight=ce_weight, **options,
    )
    rows = None
    if use_token_scaling or return_z_loss or return_token_accuracy or return_predicted_tokens:
        fw = framework(input)
        h2, w, y1, b, opts, chunk = _linear.prepare(
            fw, input.detach(), weight.detach(), target, None if bias is None else bias.detach(),
            options.get("chunk_size"), {"ignore_index": ignore_index, "softcap": softcap}, None,
        )
        with torch.no_grad():
            rows = _linear.row_statistics(fw, h2, w, b, y1, opts.ignore_index, opts.softcap, chunk)
    if not use_token_scaling:
        loss = smoothloss.linear_cross_entropy(input, weight, target, reduction=reduction, z_loss=z, **common)
    else:  # each row's loss times its label's detached probability, then Liger's reduction
        valid, _, _, p_y = rows
        per_row = smoothloss.linear_cross_entropy(input, weight, target, reduction="none", z_loss=z, **common)
        per_row = per_row * p_y.reshape(per_row.shape).to(per_row.dtype)
        if reduction == "none":
            loss = per_row
        else:
            loss = per_row.sum()
            if reduction == "mean":
                den = valid.sum() if ce_weight is None else ce_weight.to(per_row.dtype)[target.reshape(-1)[valid]].sum()
                loss = torch.where(den == 0, 0.0, loss / torch.where(den == 0, 1.0, den))
    return _outputs(loss, rows, target, input.dtype, lse_square_scale, reduction, use_token_scaling,
                    return_z_loss, return_token_accuracy, return_predicted_tokens)


def _outputs(
    loss: Tensor, rows: Any, target: Tensor, dtype: torch.dtype, lse_square_scale: float, reduction: str,
    use_token_scaling: bool, return_z_loss: bool, return_token_accuracy: bool, return_predicted_tokens: bool,
) -> Any:
    """The loss, or Liger's :class:`CrossEntropyOutput` with the outputs asked for, from the
    core's detached row statistics: the z-loss reduced as Liger reduces it (over the
    valid count for ``"mean"``), the argmax accuracy, the argmax (-1 at ignored rows)."""
    if not (return_z_loss or return_token_accuracy or return_predicted_tokens):
        return loss
    valid, lse, argmax, p_y = rows
    shape = target.shape
    z_loss = accuracy = predicted = None
    if return_z_loss:
        per = torch.where(valid, lse_square_scale * lse * lse, 0.0)
        per = (per * p_y if use_token_scaling else per).to(dtype)
        z_loss = per.reshape(shape) if reduction == "none" else per.sum() if reduction == "sum" else per.sum() / valid.sum()
    if return_token_accuracy:
        hit = ((argmax == _wide(target).reshape(-1)) & valid).to(torch.float32)
        accuracy = hit.reshape(shape) if reduction == "none" else hit.sum() / valid.sum()
    if return_predicted_tokens:
        predicted = torch.where(valid, argmax, -1).to(torch.int64).reshape(shape)
    return CrossEntropyOutput(loss=loss, z_loss=z_loss, token_accuracy=accuracy, predicted_tokens=predicted)


def linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    ce_weight: Tensor | None = None,
    ignore_index: int = -100,
    lse_square_scale: float = 0.0,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    softcap: float | None = None,
    return_z_loss: bool = False,
    accum_dtype: torch.dtype | None = None,
    use_token_scaling: bool = False,
    return_token_accuracy: bool = False,
    return_predicted_tokens: bool = False,
    *,
    convention: str = "uniform",
    chunk_size: int | None = None,
    kl: bool = False,
) -> Any:
    r"""Drop-in for Liger-Kernel's ``liger_fused_linear_cross_entropy``: the label-smoothed
    cross-entropy of ``input @ weight.T + bias`` without its N×V logits.

    Per valid row (PyTorch's class-weight semantics, Liger's too):
    ``ℓ = (1-ε)·w_y·(lse - z_y) + (ε/V)·Σ_c w_c·(lse - z_c) + s·lse²`` on the (soft-capped)
    logits z, s = ``lse_square_scale``. ``"mean"`` divides the cross-entropy by Σ_valid w_y
    (the valid count without ``ce_weight``) and the z-term by the valid count, as Liger;
    a mean over zero valid rows is 0. ``use_token_scaling`` multiplies each row's loss
    (and z-loss) by its label's probability ``softmax(z)_y``, detached.

    Args:
        input: hidden states (..., H).
        weight: the projection (V, H).
        target: class indices, ``input.shape[:-1]``.
        bias: optional (V,).
        ce_weight: optional (V,) class weights.
        ignore_index: label that leaves the loss.
        lse_square_scale: z-loss coefficient.
        label_smoothing: ε in [0, 1].
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        softcap: logits ← s·tanh(logits/s).
        return_z_loss: return a :class:`CrossEntropyOutput` with the z-loss (reduced like
            the loss).
        accum_dtype: accepted for Liger's signature; gradients always accumulate in float32
            (or float64 for float64 inputs), so it changes nothing.
        use_token_scaling: scale each row by its label's detached probability.
        return_token_accuracy: also the argmax accuracy over valid rows (per row for
            ``"none"``).
        return_predicted_tokens: also the argmax (-1 at ignored rows).
        convention: the library's extra (see :func:`smoothloss.linear_cross_entropy`).
        chunk_size: rows per chunk (see :func:`smoothloss.linear_cross_entropy`).
        kl: the library's extra (see :func:`smoothloss.linear_cross_entropy`).

    Example:
        >>> import torch
        >>> from smoothloss.torch import linear_cross_entropy
        >>> h = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
        >>> head = torch.nn.Linear(8, 50, dtype=torch.float64)
        >>> y = torch.tensor([3, 1, -100, 49, 0, 7])
        >>> loss = linear_cross_entropy(h, head.weight, y, head.bias, None, -100, 0.0, 0.1)
        >>> ref = torch.nn.functional.cross_entropy(head(h), y, label_smoothing=0.1)
        >>> torch.allclose(loss, ref)
        True
    """
    for name, value in (("input", input), ("weight", weight), ("target", target)):
        _check_tensor(name, value)
    _check_tensor("bias", bias, optional=True)
    _check_tensor("ce_weight", ce_weight, optional=True)
    _check_flags(
        accum_dtype, return_z_loss=return_z_loss, use_token_scaling=use_token_scaling,
        return_token_accuracy=return_token_accuracy, return_predicted_tokens=return_predicted_tokens,
    )
    device_type = input.device.type
    if _autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return _no_autocast(
        device_type, _compute, input, weight, _wide(target), bias, ce_weight, ignore_index, lse_square_scale,
        label_smoothing, reduction, softcap, return_z_loss, use_token_scaling, return_token_accuracy,
        return_predicted_tokens, {"convention": convention, "chunk_size": chunk_size, "kl": kl},
    )


class LinearCrossEntropyLoss(nn.Module):
    r"""Drop-in for Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss``: same constructor
    (positional order and defaults) and call, ``loss_fn(lin_weight, _input, target,
    bias=None)``, computed by :func:`linear_cross_entropy`. Extras, keyword-only:
    ``convention``, ``chunk_size``, ``kl``. Options are checked here (``ValueError``).

    Example:
        >>> import torch
        >>> from smoothloss.torch import LinearCrossEntropyLoss
        >>> loss_fn = LinearCrossEntropyLoss(None, -100, 1e-4, 0.1)
        >>> h, w = torch.randn(10, 16), torch.randn(100, 16, requires_grad=True)
        >>> loss = loss_fn(w, h, torch.randint(0, 100, (10,)))
        >>> loss.backward(); w.grad.shape
        torch.Size([100, 16])
    """

    def __init__(
        self,
        ce_weight: Tensor | None = None,
        ignore_index: int = -100,
        lse_square_scale: float = 0.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        softcap: float | None = None,
        return_z_loss: bool = False,
        accum_dtype: torch.dtype | None = None,
        use_token_scaling: bool = False,
        return_token_accuracy: bool = False,
        return_predicted_tokens: bool = False,
        *,
        convention: str = "uniform",
        chunk_size: int | None = None,
        kl: bool = False,
    ) -> None:
        super().__init__()
        # the core's checks, once, on a tiny probe: bad options fail here, not at the first step
        linear_cross_entropy(
            torch.zeros(1, 1), torch.zeros(2, 1), torch.zeros(1, dtype=torch.int64), None, None, ignore_index,
            lse_square_scale, label_smoothing, reduction, softcap, return_z_loss, accum_dtype, use_token_scaling,
            return_token_accuracy, return_predicted_tokens, convention=convention, chunk_size=chunk_size, kl=kl,
        )
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.lse_square_scale = lse_square_scale
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        self.accum_dtype = accum_dtype
        self.use_token_scaling = use_token_scaling
        self.return_token_accuracy = return_token_accuracy
        self.return_predicted_tokens = return_predicted_tokens
        self.convention = convention
        self.chunk_size = chunk_size
        self.kl = kl

    def forward(self, lin_weight: Tensor, _input: Tensor, target: Tensor, bias: Tensor | None = None) -> Any:
        return linear_cross_entropy(
            _input, lin_weight, target, bias, self.ce_weight, self.ignore_index, self.lse_square_scale,
            self.label_smoothing, self.reduction, self.softcap, self.return_z_loss, self.accum_dtype,
            self.use_token_scaling, self.return_token_accuracy, self.return_predicted_tokens,
            convention=self.convention, chunk_size=self.chunk_size, kl=self.kl,
        )

    def extra_repr(self) -> str:
        names = (
            "ignore_index", "lse_square_scale", "label_smoothing", "reduction", "softcap", "return_z_loss",
            "accum_dtype", "use_token_scaling", "return_token_accuracy", "return_predicted_tokens", "convention",
            "chunk_size", "kl",
        )
        return ", ".join(f"{n}={getattr(self, n)!r}" for n in names)


def liger_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: Any = None,
    ignore_index: int = -100,
    reduce: Any = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    return_z_loss: bool = False,
    return_token_accuracy: bool = False,
    return_predicted_tokens: bool = False,
    *,
    convention: str = "uniform",
    kl: bool = False,
) -> Any:
    r"""Drop-in for Liger-Kernel's ``liger_cross_entropy`` (the functional of
    ``LigerCrossEntropyLoss``): :func:`smoothloss.cross_entropy` on logits ``input``
    (N, V) with Liger's arguments, order and outputs (see :func:`linear_cross_entropy`
    for the formula). ``size_average`` and ``reduce`` are placeholders, ignored as Liger
    ignores them.

    Example:
        >>> import torch
        >>> from smoothloss.torch import liger_cross_entropy
        >>> x, y = torch.randn(4, 10, dtype=torch.float64), torch.tensor([1, -100, 3, 9])
        >>> out = liger_cross_entropy(x, y, None, None, -100, None, "mean", 0.1, return_token_accuracy=True)
        >>> torch.allclose(out.loss, torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))
        True
    """
    _check_tensor("input", input)
    _check_tensor("target", target)
    _check_tensor("weight", weight, optional=True)
    _check_flags(None, return_z_loss=return_z_loss, return_token_accuracy=return_token_accuracy,
                 return_predicted_tokens=return_predicted_tokens)
    target = _wide(target)
    z = _liger_z(target, weight, ignore_index, lse_square_scale, reduction)
    loss = smoothloss.cross_entropy(
        input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z, softcap=softcap, convention=convention, kl=kl,
    )
    rows = None
    if return_z_loss or return_token_accuracy or return_predicted_tokens:
        logits = input.detach().reshape(-1, input.shape[-1])
        with torch.no_grad():
            rows = _linear.row_statistics(
                framework(logits), logits, None, None, target.reshape(-1), ignore_index, softcap,
                max(1, int(logits.shape[0])),
            )
    return _outputs(loss, rows, target, input.dtype, lse_square_scale, reduction, False, return_z_loss,
                    return_token_accuracy, return_predicted_tokens)


class LigerCrossEntropyLoss(nn.Module):
    r"""Drop-in for Liger-Kernel's ``LigerCrossEntropyLoss``: same constructor (positional
    order and defaults) and call ``loss_fn(_input, target)``, computed by
    :func:`liger_cross_entropy`. Extras, keyword-only: ``convention``, ``kl``.

    Example:
        >>> import torch
        >>> from smoothloss.torch import LigerCrossEntropyLoss
        >>> loss_fn = LigerCrossEntropyLoss(None, -100, 1e-4, 0.1)
        >>> loss_fn(torch.randn(4, 10), torch.tensor([1, 2, 3, 4])).shape
        torch.Size([])
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        lse_square_scale: float = 0.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        softcap: float | None = None,
        return_z_loss: bool = False,
        return_token_accuracy: bool = False,
        return_predicted_tokens: bool = False,
        *,
        convention: str = "uniform",
        kl: bool = False,
    ) -> None:
        super().__init__()
        # the core's checks, once, on a tiny probe: bad options fail here, not at the first step
        liger_cross_entropy(
            torch.zeros(1, 2), torch.zeros(1, dtype=torch.int64), None, None, ignore_index, None, reduction,
            label_smoothing, lse_square_scale, softcap, return_z_loss, return_token_accuracy,
            return_predicted_tokens, convention=convention, kl=kl,
        )
        self.weight = weight
        self.ignore_index = ignore_index
        self.lse_square_scale = lse_square_scale
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        self.return_token_accuracy = return_token_accuracy
        self.return_predicted_tokens = return_predicted_tokens
        self.convention = convention
        self.kl = kl

    def forward(self, _input: Tensor, target: Tensor) -> Any:
        return liger_cross_entropy(
            _input, target, self.weight, None, self.ignore_index, None, self.reduction, self.label_smoothing,
            self.lse_square_scale, self.softcap, self.return_z_loss, self.return_token_accuracy,
            self.return_predicted_tokens, convention=self.convention, kl=self.kl,
        )
