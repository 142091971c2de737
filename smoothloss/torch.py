"""PyTorch-facing losses: drop-ins for ``torch.nn.CrossEntropyLoss`` and timm's losses.

Everything here is a thin adapter: it holds configuration, maps PyTorch's and timm's
argument conventions (class axis, probability targets, the deprecated ``size_average`` /
``reduce`` flags) onto :func:`smoothloss.cross_entropy`, and forwards. No loss is
computed in this module.

Importing :mod:`smoothloss` never imports this module (nor torch); import it explicitly::

    from smoothloss.torch import CrossEntropyLoss, LabelSmoothingCrossEntropy

Precision: 16-bit logits are accumulated in float32 by the core, so the loss is float32
and the gradient has the logits' dtype. Inside ``torch.autocast`` the core is run with
autocast disabled (it upcasts 16-bit logits itself), so autocast cannot silently lower
the precision of its internal reductions.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

import smoothloss
from smoothloss import _validation as V

__all__ = [
    "CrossEntropyLoss",
    "LabelSmoothingCrossEntropy",
    "SoftTargetCrossEntropy",
    "cross_entropy",
]

_LEGACY_WARNING = "size_average and reduce args will be deprecated, please use reduction='{}' instead."


def _legacy_reduction(size_average: bool | None, reduce: bool | None, stacklevel: int) -> str:
    """PyTorch's mapping of the deprecated ``size_average`` / ``reduce`` flags.

    Same table and same ``UserWarning`` text as ``torch.nn._reduction.legacy_get_string``:
    ``None`` counts as True; reduce=False → "none"; else size_average=False → "sum";
    else "mean".
    """
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if size_average and reduce:
        reduction = "mean"
    elif reduce:
        reduction = "sum"
    else:
        reduction = "none"
    warnings.warn(_LEGACY_WARNING.format(reduction), UserWarning, stacklevel=stacklevel + 1)
    return reduction


def _check_tensor(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}; "
            "use smoothloss.cross_entropy for other array types"
        )


def _autocast_enabled(device_type: str) -> bool:
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None:  # torch >= 2.4
        return bool(available(device_type) and torch.is_autocast_enabled(device_type))
    if device_type == "cpu":  # pragma: no cover - torch 2.3
        return bool(torch.is_autocast_cpu_enabled())
    if device_type == "cuda":  # pragma: no cover - torch 2.3
        return bool(torch.is_autocast_enabled())
    return False  # pragma: no cover


# Integer label dtypes other than int64: torch's gather/take_along_dim index with int64.
_NARROW_INTS = tuple(
    getattr(torch, name)
    for name in ("uint8", "int8", "int16", "int32", "uint16", "uint32", "uint64")
    if hasattr(torch, name)
)


def _forward(logits: Tensor, targets: Tensor, **options: Any) -> Tensor:
    """Call the core, outside any enclosing autocast region of the logits' device.

    Autocast would otherwise choose 16-bit kernels for some of the core's float32 ops;
    the core does its own upcasting of 16-bit logits.
    Class indices of a narrower integer dtype are widened to int64 first.
    """
    if targets.dtype in _NARROW_INTS:
        targets = targets.to(torch.int64)
    device_type = logits.device.type
    if _autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return smoothloss.cross_entropy(logits, targets, **options)
    return smoothloss.cross_entropy(logits, targets, **options)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int | None = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    convention: str = "uniform",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> Tensor:
    r"""Drop-in for ``torch.nn.functional.cross_entropy``, computed by :func:`smoothloss.cross_entropy`.

    The classes lie on axis 1 of ``input`` of shape (N, C) or (N, C, d1, ..., dk), and on
    axis 0 of an unbatched input of shape (C,). ``target`` holds integer class indices
    (shape (N,), (N, d1, ..., dk) or ()) or floating class probabilities (``input``'s
    shape). Integer or floating dtype decides which. The differences from PyTorch are
    listed in :class:`CrossEntropyLoss`.

    Args:
        input: floating logits.
        target: class indices or class probabilities, as above.
        weight: optional per-class weights of shape (C,) (PyTorch semantics: the mean of
            class-index targets divides by the summed weights of the valid targets, of
            probability targets by the number of positions).
        size_average: deprecated, mapped onto ``reduction`` as PyTorch does (with
            PyTorch's ``UserWarning``).
        ignore_index: class index whose positions contribute 0 and leave the mean's
            denominator; ``None`` ignores nothing. Probability targets accept only the
            default -100 (or None), which they do not use, as in PyTorch.
        reduce: deprecated, mapped onto ``reduction`` as PyTorch does.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Overridden by ``size_average`` /
            ``reduce`` when either is not None, as in PyTorch.
        label_smoothing: ε in [0, 1].
        convention: ``"uniform"`` (PyTorch's: every class gets ε/C) or ``"others"``
            (fairseq's: every non-target class gets ε/(C-1)).
        z_loss: coefficient of the ``logsumexp(input)²`` penalty per valid position.
        softcap: if given, ``input ← softcap·tanh(input/softcap)`` first.
        kl: subtract the entropy of the smoothed target, so the minimum is 0.

    Returns:
        The loss: a scalar, or for ``reduction="none"`` the target's shape (class-index
        targets) or the input's shape without the class axis.

    Raises:
        ValueError: bad shapes, labels outside [0, C) other than ``ignore_index``,
            smoothing outside [0, 1], an unknown reduction or convention, C = 1.
        TypeError: non-tensor arguments, integer logits, targets neither integer nor
            floating.

    Example:
        >>> import torch
        >>> from smoothloss.torch import cross_entropy
        >>> x = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
        >>> y = torch.randint(0, 5, (4, 3))
        >>> loss = cross_entropy(x, y, label_smoothing=0.1)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))
        True
        >>> loss.backward()
        >>> x.grad.shape
        torch.Size([4, 5, 3])
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, stacklevel=2)
    _check_tensor("input", input)
    _check_tensor("target", target)
    _check_tensor("weight", weight, optional=True)
    probabilities = target.is_floating_point()
    if probabilities and ignore_index is not None and ignore_index != -100:
        raise ValueError(
            f"ignore_index={ignore_index} is not supported for probability (floating) targets, "
            "as in PyTorch; leave it at -100 or None, or give such positions an all-zero target"
        )
    return _forward(
        input,
        target,
        axis=1 if input.ndim >= 2 else 0,
        label_smoothing=label_smoothing,
        convention=convention,
        weight=weight,
        ignore_index=None if probabilities else ignore_index,
        reduction=reduction,
        z_loss=z_loss,
        softcap=softcap,
        kl=kl,
    )


class CrossEntropyLoss(nn.CrossEntropyLoss):
    r"""Drop-in for ``torch.nn.CrossEntropyLoss``, computed by :func:`smoothloss.cross_entropy`.

    A subclass of ``torch.nn.CrossEntropyLoss`` with the same constructor, attributes
    (``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``) and results, plus
    the keyword-only extras of :func:`smoothloss.cross_entropy`. ``weight`` is a buffer,
    as in PyTorch: it is in ``state_dict()`` and ``.to(device/dtype)`` moves it.

    Class axis 1 for (N, C) and (N, C, d1, ..., dk) inputs, axis 0 for an unbatched (C,)
    input with a scalar target. Integer targets are class indices (``ignore_index``
    applies); floating targets are class probabilities (as in PyTorch, ``ignore_index``
    must then be the default -100, or None, and is unused). ``label_smoothing`` mixes
    ε/C into every class, for both kinds.

    The deprecated ``size_average`` / ``reduce`` are supported: when either is not None
    they set ``reduction`` with PyTorch's table (``reduce=False`` → "none", else
    ``size_average=False`` → "sum", else "mean") and PyTorch's ``UserWarning``.

    Deliberate differences from PyTorch:

    * A ``"mean"`` over zero valid positions (every target equals ``ignore_index``, or
      all their weights are 0) is 0 with a zero gradient; PyTorch returns NaN (0/0,
      pytorch issue 116349).
    * C = 1 (a single class) raises ``ValueError``; PyTorch returns a loss of 0.
    * Bad input raises ``ValueError``/``TypeError`` naming the shapes or values: labels
      out of range (PyTorch: ``IndexError`` on CPU, a device-side assert on CUDA), wrong
      ``weight`` length or target shape (PyTorch: ``RuntimeError``), ``label_smoothing``
      outside [0, 1], an unknown ``reduction``, a non-default ``ignore_index`` with
      probability targets (PyTorch: ``RuntimeError``). The deprecated
      ``reduction="elementwise_mean"`` is rejected (use ``"mean"``). Invalid constructor
      options raise at construction instead of at the first call. Under
      ``torch.compile`` the label-range check (it needs values) is skipped.
    * 16-bit logits are accumulated in float32 and the loss is float32 (PyTorch returns
      the input's dtype); the gradient keeps the input's dtype. Inside
      ``torch.autocast`` the loss is computed with autocast disabled.
    * More dtypes are accepted: class indices of any integer dtype (widened to int64;
      PyTorch: int64 or uint8 only), and ``weight`` / probability targets of any floating dtype (cast to the
      computation dtype; PyTorch needs ``weight`` in the input's dtype).
    * ``ignore_index=None`` is accepted and ignores nothing.
    * Not scriptable with TorchScript (``torch.jit.script``); use ``torch.compile``.

    Args:
        weight: optional per-class weights of shape (C,).
        size_average: deprecated, see above.
        ignore_index: class index to ignore (default -100), or None.
        reduce: deprecated, see above.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        label_smoothing: ε in [0, 1].
        convention: ``"uniform"`` (default, PyTorch's ε/C) or ``"others"`` (ε/(C-1)
            to every non-target class, fairseq/t5x/Megatron).
        z_loss: coefficient of the ``logsumexp²`` penalty (PaLM, t5x).
        softcap: if given, logits ← softcap·tanh(logits/softcap) first (Gemma 2).
        kl: subtract the entropy of the smoothed target so the minimum is 0 (t5x).

    Example:
        >>> import torch
        >>> from smoothloss.torch import CrossEntropyLoss
        >>> x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
        >>> y = torch.tensor([0, 1, 2, 3, 4, -100, 1, 2])
        >>> w = torch.rand(5, dtype=torch.float64)
        >>> ours = CrossEntropyLoss(weight=w, label_smoothing=0.1)
        >>> theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
        >>> torch.allclose(ours(x, y), theirs(x, y))
        True
        >>> CrossEntropyLoss()(x, torch.full((8,), -100)).item()  # all ignored: 0, not NaN
        0.0
    """

    convention: str
    z_loss: float
    softcap: float | None
    kl: bool

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int | None = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        convention: str = "uniform",
        z_loss: float = 0.0,
        softcap: float | None = None,
        kl: bool = False,
    ) -> None:
        _check_tensor("weight", weight, optional=True)
        if weight is not None and weight.ndim != 1:
            raise ValueError(f"weight must have shape (C,) (one entry per class), got {tuple(weight.shape)}")
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce, stacklevel=2)
            size_average = reduce = None
        V.check_choice("reduction", reduction, V.REDUCTIONS)
        V.check_smoothing(label_smoothing)
        V.check_choice("convention", convention, V.CONVENTIONS)
        V.check_nonnegative(z_loss, "z_loss")
        V.check_softcap(softcap)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be None or an int, got {type(ignore_index).__name__}")
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
        self.convention = convention
        self.z_loss = z_loss
        self.softcap = softcap
        self.kl = bool(kl)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of ``input`` (logits, classes on axis 1, or 0 if unbatched) against ``target``."""
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            convention=self.convention,
            z_loss=self.z_loss,
            softcap=self.softcap,
            kl=self.kl,
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.convention != "uniform":
            parts.append(f"convention={self.convention!r}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.kl:
            parts.append("kl=True")
        return ", ".join(parts)


class LabelSmoothingCrossEntropy(nn.Module):
    r"""Drop-in for ``timm.loss.LabelSmoothingCrossEntropy``.

    ``forward(x, target)`` is the mean over positions of
    ``(1-ε)·(-log p_target) + ε·mean_c(-log p_c)``, classes on the last axis of ``x``,
    integer ``target`` of ``x``'s shape without that axis: timm's loss (PyTorch's
    ``label_smoothing`` convention, ε/C to every class), computed by
    :func:`smoothloss.cross_entropy` without a log-softmax of the logits' size.
    Attributes ``smoothing`` and ``confidence = 1 - smoothing`` as in timm.

    Deliberate differences from timm:

    * ``smoothing`` outside [0, 1) raises ``ValueError`` (timm asserts ``smoothing < 1``
      and accepts negative values).
    * Any leading shape (..., C) with targets (...) is accepted, the mean taken over all
      positions; timm's ``gather`` handles only (N, C).
    * Labels outside [0, C) raise ``ValueError`` (timm: ``RuntimeError`` from gather).
    * 16-bit logits give a float32 loss (accumulated in float32); the gradient keeps the
      logits' dtype.

    Args:
        smoothing: ε in [0, 1), default 0.1.

    Example:
        >>> import torch
        >>> from smoothloss.torch import LabelSmoothingCrossEntropy
        >>> x = torch.randn(4, 10, dtype=torch.float64)
        >>> y = torch.tensor([1, 0, 9, 3])
        >>> logp = x.log_softmax(-1)
        >>> timm = (0.9 * -logp.gather(-1, y[:, None]).squeeze(1) + 0.1 * -logp.mean(-1)).mean()
        >>> torch.allclose(LabelSmoothingCrossEntropy(0.1)(x, y), timm)
        True
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        smoothing = V.check_smoothing(smoothing, "smoothing")
        if smoothing >= 1.0:
            raise ValueError(f"smoothing must be < 1 (as in timm), got {smoothing}")
        self.smoothing = smoothing
        self.confidence = 1.0 - smoothing

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """Mean smoothed cross-entropy of logits ``x`` (classes last) against class indices."""
        _check_tensor("x", x)
        _check_tensor("target", target)
        if target.is_floating_point():
            raise TypeError(
                f"target must hold integer class indices, got dtype {target.dtype}; "
                "use SoftTargetCrossEntropy for probability targets"
            )
        return _forward(x, target, axis=-1, label_smoothing=self.smoothing)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"


class SoftTargetCrossEntropy(nn.Module):
    r"""Drop-in for ``timm.loss.SoftTargetCrossEntropy``.

    ``forward(x, target)`` is the mean over positions of ``Σ_c -target_c·log_softmax(x)_c``,
    classes on the last axis, ``target`` floating of ``x``'s shape (e.g. the output of
    timm's or smoothloss's ``Mixup``). Targets are used as given (not renormalised,
    not smoothed).

    Deliberate differences from timm:

    * ``target`` must have exactly ``x``'s shape (timm broadcasts) and a floating dtype
      (``TypeError`` otherwise; class indices belong in :class:`LabelSmoothingCrossEntropy`).
    * 16-bit logits give a float32 loss (accumulated in float32); the gradient keeps the
      logits' dtype.

    Example:
        >>> import torch
        >>> from smoothloss.torch import SoftTargetCrossEntropy
        >>> x = torch.randn(4, 10, dtype=torch.float64)
        >>> t = torch.softmax(torch.randn(4, 10, dtype=torch.float64), -1)
        >>> timm = torch.sum(-t * x.log_softmax(-1), -1).mean()
        >>> torch.allclose(SoftTargetCrossEntropy()(x, t), timm)
        True
    """

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy of logits ``x`` (classes last) against probabilities ``target``."""
        _check_tensor("x", x)
        _check_tensor("target", target)
        if not target.is_floating_point():
            raise TypeError(
                f"target must hold floating class probabilities of x's shape, got dtype {target.dtype}; "
                "use LabelSmoothingCrossEntropy for class indices"
            )
        return _forward(x, target, axis=-1)
