"""Drop-in for Cut Cross-Entropy (apple/ml-cross-entropy): change one import and keep the call.

::

    from cut_cross_entropy import linear_cross_entropy               # before
    from smoothloss.cut_cross_entropy import linear_cross_entropy    # after

Same positional order, keywords and defaults as CCE's ``linear_cross_entropy`` (and its
``LinearCrossEntropy`` module and ``LinearCrossEntropyImpl`` names), on any device torch
runs on. The loss is :func:`smoothloss.linear_cross_entropy` (row chunks, closed-form
gradients, never the N×V logits); this module maps CCE's ``shift``, ``return_lse``, its
all-ignored NaN and its option checks onto it, and forwards. No loss formula lives here.
"""

from __future__ import annotations

import enum
import sys
from typing import Any

import torch
from torch import Tensor, nn

import smoothloss
from smoothloss._formulas import compute_dtype, soft_cap
from smoothloss._torch_support import autocast_enabled, check_tensor, no_autocast, wide

__all__ = ["IGNORE_INDEX", "LinearCrossEntropy", "LinearCrossEntropyImpl", "linear_cross_entropy"]

#: CCE's ``cut_cross_entropy.constants.IGNORE_INDEX``.
IGNORE_INDEX = -100

REDUCTIONS = ("mean", "sum", "none")


class LinearCrossEntropyImpl(enum.IntEnum):
    """CCE's implementation names (``cut_cross_entropy.LinearCrossEntropyImpl``, same
    members and values). Every one runs the same path here; they differ only in the
    gradient filtering they ask for (:func:`_filter_for`)."""

    CCE = enum.auto()
    TORCH_COMPILE = enum.auto()
    CCE_KAHAN_FULL_C = enum.auto()
    CCE_KAHAN_FULL_E = enum.auto()
    CCE_EXACT = enum.auto()
    CCE_KAHAN_FULL_C_FULL_E = enum.auto()
    CCE_KAHAN_FULL = enum.auto()


IMPLS = frozenset(member.name.lower() for member in LinearCrossEntropyImpl)

# The presets that set filter_eps themselves, so that the user's value is never looked
# at (CCE's ``CCEPresets.build_for_impl``); "cce" keeps it, "torch_compile" ignores it.
PRESET_FILTER_EPS: dict[str, str | None] = {
    "cce_exact": None,
    "cce_kahan_full": None,
    "cce_kahan_full_c_full_e": None,
    "cce_kahan_full_c": "auto",
    "cce_kahan_full_e": "auto",
}

DTENSOR_MESSAGE = (
    "Received {name} as a torch.distributed.tensor.DTensor. This is not supported. "
    "If possible, change the sharding strategy such that {name} is already unsharded."
)


def _impl_name(impl: Any) -> str:
    """CCE's impl as its lower-case name; an enum member of CCE's own class works too."""
    name = impl.name.lower() if isinstance(impl, enum.Enum) else impl
    if not isinstance(name, str) or name not in IMPLS:
        raise NotImplementedError(f"{name} is not implemented.")
    return name


def _check_filter_eps(impl: str, filter_eps: Any) -> None:
    """CCE's ``_handle_eps`` check, where CCE makes it: on the "cce*" impls, after a
    preset replaced the value (a RuntimeError for anything but None, a float, "auto")."""
    if impl == "torch_compile":
        return
    filter_eps = PRESET_FILTER_EPS[impl] if impl in PRESET_FILTER_EPS else filter_eps
    if filter_eps is None or isinstance(filter_eps, float) or (isinstance(filter_eps, str) and filter_eps == "auto"):
        return
    raise RuntimeError(f"Unknown eps {filter_eps=}")


def _filter_for(impl: str, filter_eps: Any, filter_e_grad: bool, filter_c_grad: bool) -> Any:
    """The ``filter_eps`` that a call filters with, as CCE resolves it: none on
    "torch_compile" (CCE's own torch_compile path does not filter), the preset's on the
    Kahan and exact presets, else the user's. With ``filter_e_grad`` or ``filter_c_grad``
    False, none: here one filter serves both gradients, and the exact one is never worse."""
    if impl == "torch_compile" or not (filter_e_grad and filter_c_grad):
        return None
    return PRESET_FILTER_EPS.get(impl, filter_eps)


def _check_shift(shift: Any, targets: Tensor) -> int:
    # bool is an int: True is 1, and must be below T as well
    if isinstance(shift, int) and (shift < 0 or shift >= targets.size(-1)):
        raise ValueError(f"Shift must be in the range [0, {targets.size(-1)}). Got {shift}.")
    return int(shift)


def _check_not_dtensor(**tensors: Any) -> None:
    # Without torch.distributed.tensor imported, no argument can be a DTensor: no import here.
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    for name, value in tensors.items():
        if dtensor is not None and isinstance(value, dtensor):
            raise ValueError(DTENSOR_MESSAGE.format(name=name))


def _shifted(targets: Tensor, shift: int, ignore_index: int) -> Tensor:
    """Position i's label is ``targets[..., i + shift]``; the last ``shift`` positions get
    ``ignore_index``. The hidden states then need no slicing, so no copy of them; only
    the labels are copied."""
    if shift == 0:
        return targets
    pad = targets.new_full((*targets.shape[:-1], shift), ignore_index)
    return torch.cat((targets[..., shift:], pad), dim=-1)


def _drop_tail(per_position: Tensor, shift: int) -> Tensor:
    """CCE's ``(..., T - shift)`` layout of per-position outputs under ``shift`` (a view)."""
    return per_position if shift == 0 else per_position[..., : per_position.shape[-1] - shift]


def _nan_if_empty(loss: Tensor, valid: Tensor) -> Tensor:
    """The core's mean over no valid position is 0; CCE's is NaN (``nll.mean()`` of an
    empty tensor). The NaN is added as a constant, so the gradient stays the core's 0."""
    return loss + torch.where(valid.any(), 0.0, float("nan")).to(loss.dtype)


def _target_logit(e: Tensor, c: Tensor, bias: Tensor | None, labels: Tensor, valid: Tensor, softcap: Any) -> Tensor:
    """Each position's (soft-capped) logit at its label, rounded as the core rounds a
    chunk's logits (a matmul in the inputs' dtype, the bias added in it, then the compute
    dtype and the cap), so that ``row loss + target logit`` is the log-sum-exp of the
    logits the loss was computed from. Ignored positions read class 0."""
    y = torch.where(valid, labels, 0)
    z = torch.matmul(e.unsqueeze(-2), c[y].unsqueeze(-1))[..., 0, 0]
    if bias is not None:
        z = z + bias[y]
    z = z.to(compute_dtype(torch, z.dtype))
    return soft_cap(torch, z, softcap)[0]


def _forward(
    e: Tensor, c: Tensor, targets: Tensor, bias: Tensor | None, ignore_index: int, softcap: Any, reduction: str,
    shift: int, return_lse: bool, chunk_size: int | None, filter_eps: Any,
) -> tuple[Tensor, Tensor | None]:
    labels = _shifted(targets, shift, ignore_index)
    valid = labels != ignore_index
    options = dict(bias=bias, chunk_size=chunk_size, ignore_index=ignore_index, softcap=softcap, filter_eps=filter_eps)
    if not return_lse:
        loss = smoothloss.linear_cross_entropy(e, c, labels, reduction=reduction, **options)
        if reduction == "mean":
            loss = _nan_if_empty(loss, valid)
        return _drop_tail(loss, shift) if reduction == "none" else loss, None
    # ℓ = lse - z_y at label smoothing 0, so lse = ℓ + z_y: the core's per-row loss gives
    # the log-sum-exp and its gradient (softmax) without another pass over the logits.
    rows = smoothloss.linear_cross_entropy(e, c, labels, reduction="none", **options)
    lse = torch.where(valid, rows + _target_logit(e, c, bias, labels, valid, softcap), 0.0)
    if reduction == "none":
        loss = _drop_tail(rows, shift)
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = _nan_if_empty(rows.sum() / valid.sum().clamp(min=1).to(rows.dtype), valid)
    return loss, _drop_tail(lse, shift)


def linear_cross_entropy(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
    reduction: str = "mean",
    shift: bool | int = 0,
    return_lse: bool = False,
    filter_eps: float | str | None = "auto",
    accum_e_fp32: bool = False,
    accum_c_fp32: bool = False,
    filter_e_grad: bool = True,
    filter_c_grad: bool = True,
    impl: str | LinearCrossEntropyImpl = LinearCrossEntropyImpl.CCE,
    vocab_parallel_options: Any = None,
    *,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""CCE's ``linear_cross_entropy``: ``F.cross_entropy((e @ c.T + bias).float(), targets)``
    without the N×V logits, computed by :func:`smoothloss.linear_cross_entropy`.

    With ``shift`` s (True is 1) position i predicts ``targets[..., i + s]``: the loss is
    that of ``e[..., :-s, :]`` against ``targets[..., s:]``, the mean counts the valid
    positions of ``targets[..., s:]`` only, and per-position outputs have shape
    ``(..., T - s)``. ``softcap`` caps the logits (``softcap·tanh(z/softcap)``) first.
    Positions whose target is ``ignore_index`` contribute 0 and leave the mean; a mean
    over no valid position is NaN, as in CCE (its gradient is 0). 16-bit inputs give a
    float32 loss; inside ``torch.autocast`` the inputs are cast to the autocast dtype
    first, as CCE does.

    Args:
        e: embeddings (..., T, D) (any leading shape without ``shift``).
        c: classifier (V, D), ``e``'s dtype.
        targets: class indices of shape ``e.shape[:-1]``.
        bias: optional (V,).
        ignore_index: the label to skip (CCE's -100).
        softcap: the logit soft cap, or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``targets.shape``, or
            ``(..., T - shift)``).
        shift: bool or int in ``[0, T)``.
        return_lse: also return each position's log-sum-exp of the (capped) logits,
            float32 for 16-bit inputs, shape as ``"none"``'s loss, 0 at ignored
            positions, differentiable (for CCE's ``compute_z_loss``). It is the core's
            per-position loss plus the logit at the target, so it costs no extra pass over
            the logits, but the loss then takes the core's per-row path: the backward
            makes each chunk's logits again (as for ``reduction="none"``), and one (N, D)
            gather of ``c``'s target rows is made and kept for the backward.
        filter_eps: CCE's gradient filtering, with CCE's checks (a RuntimeError for a
            value other than None, a float or "auto" on the "cce" impls) and presets
            ("cce_exact", "cce_kahan_full", "cce_kahan_full_c_full_e": none;
            "cce_kahan_full_c", "cce_kahan_full_e": "auto"; "torch_compile": none, as
            CCE's own). "auto" is the dtype's epsilon / 32. The backward drops the
            softmax term in each block of 128 positions × 128 classes where every
            probability is below it and no target falls (the ``filter_eps`` of
            :func:`smoothloss.linear_cross_entropy`); the loss is exact. CCE also sorts
            the vocabulary by average logit before forming blocks; this does not.
        filter_e_grad: with ``filter_c_grad``, whether the filter applies; with either
            False, no filtering (both gradients exact).
        filter_c_grad: see ``filter_e_grad``.
        accum_e_fp32: accepted and not needed: each row's dE is one matmul over the
            vocabulary.
        accum_c_fp32: accepted and not needed: dC and d(bias) are summed over the chunks
            in float32.
        impl: any of CCE's names, or a ``LinearCrossEntropyImpl`` member (CCE's own enum
            too); all run this same path. Others raise NotImplementedError, as in CCE.
        vocab_parallel_options: must be None (NotImplementedError otherwise).
        chunk_size: smoothloss's extra, keyword-only: rows per chunk (default about
            16 MiB of logits per chunk, as :func:`smoothloss.linear_cross_entropy`).

    Returns:
        The loss, or ``(loss, lse)`` with ``return_lse=True``.

    Differences from CCE, besides the blocks gradient filtering uses: float64 inputs
    give a float64 loss (CCE upcasts to float32 only); labels outside ``[0, V)`` that are not
    ``ignore_index`` raise ValueError; shape mismatches raise ValueError, not
    AssertionError; it runs on CPU and any GPU (CCE's "cce" impls need an Ampere CUDA
    GPU and Triton).

    Example:
        >>> import torch
        >>> from smoothloss.cut_cross_entropy import linear_cross_entropy
        >>> e = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
        >>> c = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
        >>> y = torch.randint(0, 11, (2, 5))
        >>> loss, lse = linear_cross_entropy(e, c, y, shift=1, return_lse=True)
        >>> ref = torch.nn.functional.cross_entropy((e[:, :-1] @ c.T).flatten(0, 1), y[:, 1:].flatten())
        >>> bool(torch.allclose(loss, ref)), tuple(lse.shape)
        (True, (2, 4))
        >>> (loss + 1e-4 * lse.pow(2).mean()).backward()
    """
    for name, value in (("e", e), ("c", c), ("targets", targets)):
        check_tensor(name, value)
    check_tensor("bias", bias, optional=True)
    _check_not_dtensor(e=e, c=c, targets=targets, bias=bias)
    impl = _impl_name(impl)
    shift = _check_shift(shift, targets)
    if vocab_parallel_options is not None:
        raise NotImplementedError(
            "vocab_parallel_options is not supported by smoothloss.cut_cross_entropy; pass the "
            "full classifier c (or use smoothloss.torch.vocab_parallel_cross_entropy on logits)"
        )
    if bias is not None and bias.size(0) != c.size(0):
        raise ValueError(f"Bias has a different number of elements than c. {bias.size(0)} vs. {c.size(0)}.")
    _check_filter_eps(impl, filter_eps)
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown reduction {reduction}")
    if tuple(e.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"targets must have e's shape without the last axis, {tuple(e.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    device_type = e.device.type
    if autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        e, c = e.to(dtype), c.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    loss, lse = no_autocast(
        device_type, _forward, e, c, wide(targets), bias, ignore_index, softcap, reduction, shift, return_lse,
        chunk_size, _filter_for(impl, filter_eps, filter_e_grad, filter_c_grad),
    )
    return (loss, lse) if return_lse else loss


class LinearCrossEntropy(nn.Module):
    """CCE's ``LinearCrossEntropy`` module: holds the options of :func:`linear_cross_entropy`
    (same constructor) and calls it as ``module(e, c, targets, bias=None)``."""

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        softcap: float | None = None,
        reduction: str = "mean",
        shift: bool | int = 0,
        filter_eps: float | str | None = "auto",
        accum_e_fp32: bool = False,
        accum_c_fp32: bool = False,
        filter_e_grad: bool = True,
        filter_c_grad: bool = True,
        impl: str | LinearCrossEntropyImpl = LinearCrossEntropyImpl.CCE,
        return_lse: bool = False,
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.softcap = softcap
        self.reduction = reduction
        self.shift = shift
        self.filter_eps = filter_eps
        self.accum_e_fp32 = accum_e_fp32
        self.accum_c_fp32 = accum_c_fp32
        self.filter_e_grad = filter_e_grad
        self.filter_c_grad = filter_c_grad
        self.impl = impl
        self.return_lse = return_lse

    def forward(
        self, e: Tensor, c: Tensor, targets: Tensor, bias: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        return linear_cross_entropy(
            e, c, targets, bias=bias, ignore_index=self.ignore_index, softcap=self.softcap,
            reduction=self.reduction, shift=self.shift, filter_eps=self.filter_eps,
            accum_e_fp32=self.accum_e_fp32, accum_c_fp32=self.accum_c_fp32, filter_e_grad=self.filter_e_grad,
            filter_c_grad=self.filter_c_grad, impl=self.impl, return_lse=self.return_lse,
        )
