"""PyTorch-facing losses and mixing: drop-ins for ``torch.nn.CrossEntropyLoss`` and for
timm's losses and ``Mixup``.

Everything here is a thin adapter: it holds configuration, maps PyTorch's and timm's
argument conventions (class axis, probability targets, the deprecated ``size_average`` /
``reduce`` flags, timm's dense-or-index targets) onto :func:`smoothloss.cross_entropy`,
:func:`smoothloss.binary_cross_entropy` and :class:`smoothloss.Mixup`, and forwards. No
loss is computed in this module.

Importing :mod:`smoothloss` never imports this module (nor torch); import it explicitly::

    from smoothloss.torch import CrossEntropyLoss, LabelSmoothingCrossEntropy

Precision: 16-bit logits are accumulated in float32 by the core, so the loss is float32
and the gradient has the logits' dtype. Inside ``torch.autocast`` the core is run with
autocast disabled (it upcasts 16-bit logits itself), so autocast cannot silently lower
the precision of its internal reductions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import smoothloss
from smoothloss import _options, _validation as V
from smoothloss._torch_support import autocast_enabled as _autocast_enabled, check_tensor as _check_tensor
from smoothloss._torch_support import forward as _forward, legacy_reduction as _legacy_reduction
from smoothloss._torch_support import no_autocast as _no_autocast, wide as _wide
from smoothloss._options import Options
from smoothloss.torch_mixup import FastCollateMixup, Mixup
from smoothloss.torch_liger import CrossEntropyOutput, LigerCrossEntropyLoss, LinearCrossEntropyLoss
from smoothloss.torch_liger import liger_cross_entropy, linear_cross_entropy
from smoothloss.torch_parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

__all__ = [
    "BinaryCrossEntropy",
    "CrossEntropyLoss",
    "FastCollateMixup",
    "LabelSmoothingCrossEntropy",
    "LigerCrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "Mixup",
    "SoftTargetCrossEntropy",
    "cross_entropy",
    "liger_cross_entropy",
    "linear_cross_entropy",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]

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
    options = {**_options.given(
        label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
        reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    ), "ignore_index": None if probabilities else ignore_index}
    return _forward(input, target, axis=1 if input.ndim >= 2 else 0, weight=weight, **options)


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
      ``torch.compile`` and for labels batched by ``torch.func.vmap`` the label-range
      check (it needs values) cannot run: an out-of-range label then gives NaN for its
      position's loss and gradient row (PyTorch: an index error or a device assert).
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
        checked = Options.checked(**_options.given(
            label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
            reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
        ))
        ignore_index = checked.ignore_index
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
        self.convention = convention
        self.z_loss = z_loss
        self.softcap = softcap
        self.kl = bool(kl)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of ``input`` (logits, classes on axis 1, or 0 if unbatched) against ``target``."""
        return cross_entropy(input, target, weight=self.weight, **_options.attributes(self))

    def extra_repr(self) -> str:
        shown = _options.non_defaults(_options.attributes(self), drop_in={"ignore_index": -100})
        shown.pop("reduction", None)
        return ", ".join(f"{k}={v!r}" for k, v in {"reduction": self.reduction, **shown}.items())


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


class BinaryCrossEntropy(nn.Module):
    r"""Drop-in for ``timm.loss.BinaryCrossEntropy``, computed by :func:`smoothloss.binary_cross_entropy`.

    ``forward(x, target)``: sigmoid cross-entropy of the logits ``x`` (N, C) against

    * class indices ``target`` (N,): made dense with ε/C off and 1-ε+ε/C on, ε =
      ``smoothing`` (timm's one-hot with ``off_value``/``on_value``);
    * dense targets of ``x``'s shape (e.g. the soft targets of :class:`Mixup`): used as
      given, as in timm (they are assumed to be smoothed upstream), or, with
      ``smooth_dense=True``, smoothed towards 0.5 as Keras does: ``t·(1-ε) + ε/2``;

    then, if ``target_threshold`` is set, binarised as timm does: ``t ← [t > threshold]``.
    Each element's loss is PyTorch's ``binary_cross_entropy_with_logits`` with ``weight``
    and ``pos_weight``: ``w·[(1-t)·x + (1 + (pw-1)·t)·softplus(-x)]``, finite for any
    finite logit. ``sum_classes=True`` sums over the classes first and returns the mean
    over the examples, whatever ``reduction`` (timm then stores ``reduction="none"``).
    ``weight`` and ``pos_weight`` are buffers, as in timm (in ``state_dict()``, moved by
    ``.to(device/dtype)``); a number given as ``pos_weight`` becomes a 0-d tensor.

    Deliberate differences from timm:

    * ``smooth_dense`` is an addition (timm never smooths dense targets); its default
      False gives timm's results.
    * Class indices must be integer tensors (timm truncates floating ones with
      ``.long()``): ``TypeError`` otherwise. Bad shapes, labels outside [0, C),
      ``smoothing`` outside [0, 1) and an unknown ``reduction`` raise
      ``ValueError``/``TypeError`` naming the values (timm: ``AssertionError`` or
      errors from ``scatter_``/PyTorch), the constructor's at construction.
    * Any leading shape (..., C) is accepted with class indices (...); timm's
      ``scatter_`` handles (N, C) only.
    * 16-bit logits give a float32 loss (accumulated in float32); the gradient keeps
      the logits' dtype. Inside ``torch.autocast`` the loss is computed with autocast
      disabled.

    Args:
        smoothing: ε in [0, 1), default 0.1.
        target_threshold: if not None, targets above it become 1 and the others 0.
        weight: optional tensor broadcastable to ``x`` (e.g. per class, shape (C,)).
        reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.
        sum_classes: sum over the classes, then average over the examples (timm).
        pos_weight: optional weight of the positive term: a tensor broadcastable to
            ``x`` (e.g. (C,)) or a number.
        smooth_dense: also smooth dense targets, towards 0.5 (Keras's convention).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from smoothloss.torch import BinaryCrossEntropy
        >>> x = torch.randn(4, 10, dtype=torch.float64)
        >>> y = torch.tensor([1, 0, 9, 3])
        >>> dense = torch.full((4, 10), 0.01, dtype=torch.float64).scatter_(1, y[:, None], 0.91)
        >>> torch.allclose(BinaryCrossEntropy(0.1)(x, y), F.binary_cross_entropy_with_logits(x, dense))
        True
        >>> t = torch.rand(4, 10, dtype=torch.float64)  # dense targets: used as given
        >>> torch.allclose(BinaryCrossEntropy(0.1)(x, t), F.binary_cross_entropy_with_logits(x, t))
        True
    """

    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(
        self,
        smoothing: float = 0.1,
        target_threshold: float | None = None,
        weight: Tensor | None = None,
        reduction: str = "mean",
        sum_classes: bool = False,
        pos_weight: Tensor | float | None = None,
        smooth_dense: bool = False,
    ) -> None:
        super().__init__()
        smoothing = V.check_smoothing(smoothing, "smoothing")
        if smoothing >= 1.0:
            raise ValueError(f"smoothing must be < 1 (as in timm), got {smoothing}")
        if target_threshold is not None:
            if isinstance(target_threshold, bool) or not isinstance(target_threshold, (int, float)):
                raise TypeError(f"target_threshold must be None or a number, got {target_threshold!r}")
            target_threshold = float(target_threshold)
        _check_tensor("weight", weight, optional=True)
        if pos_weight is not None and not isinstance(pos_weight, Tensor):
            if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)):
                raise TypeError(f"pos_weight must be None, a number or a tensor, got {type(pos_weight).__name__}")
            pos_weight = torch.tensor(float(pos_weight))  # as timm: a 0-d tensor, so it is a buffer
        V.check_choice("reduction", reduction, V.REDUCTIONS)
        self.smoothing = smoothing
        self.target_threshold = target_threshold
        self.reduction = "none" if sum_classes else reduction  # as timm
        self.sum_classes = bool(sum_classes)
        self.smooth_dense = bool(smooth_dense)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """The loss of logits ``x`` (classes last) against class indices or dense targets."""
        _check_tensor("x", x)
        _check_tensor("target", target)
        dense = target.shape == x.shape
        if not dense:
            if target.is_floating_point() or target.dtype == torch.bool:
                raise TypeError(
                    f"target of shape {tuple(target.shape)} (not x's shape {tuple(x.shape)}) must hold "
                    f"integer class indices, got dtype {target.dtype}"
                )
            if x.ndim == 2 and target.ndim != 1 and target.numel() == x.shape[0]:
                target = target.reshape(-1)  # timm's target.view(-1, 1), e.g. for (N, 1) labels
        return _forward(
            x,
            target,
            loss=smoothloss.binary_cross_entropy,
            label_smoothing=self.smoothing if self.smooth_dense or not dense else 0.0,
            target_threshold=self.target_threshold,
            weight=self.weight,
            pos_weight=self.pos_weight,
            reduction="mean" if self.sum_classes else self.reduction,
            sum_classes=self.sum_classes,
        )

    def extra_repr(self) -> str:
        parts = [f"smoothing={self.smoothing}", f"reduction={self.reduction!r}"]
        if self.target_threshold is not None:
            parts.append(f"target_threshold={self.target_threshold}")
        if self.sum_classes:
            parts.append("sum_classes=True")
        if self.smooth_dense:
            parts.append("smooth_dense=True")
        return ", ".join(parts)
