"""Binary (sigmoid) cross-entropy with label smoothing, on any Array-API backend.

Per element, with the logit x, the target t and the positive-class weight ``pw``:

``ℓ = (1-t)·x + (1 + (pw-1)·t)·softplus(-x)``   (PyTorch's ``pos_weight`` form)

and without ``pos_weight`` the equivalent ``ℓ = max(x, 0) - x·t + log1p(exp(-|x|))``.
``softplus(-x) = max(-x, 0) + log1p(exp(-|x|))`` never exponentiates a positive number,
so the loss stays finite for any finite logit. The branches are chosen with
``where(x >= 0, ...)`` for both the linear and the log1p parts, so framework autodiff
gives the exact derivative ``(1 + (pw-1)·t)·σ(x) - pw·t`` at x = 0 too (``maximum``
and ``abs`` would leave the subgradient at 0 to each framework: TensorFlow's
``maximum`` sends all of it to the first argument).
"""

from __future__ import annotations

from typing import Any

from smoothloss import _validation as V
from smoothloss._formulas import compute_dtype, reduce
from smoothloss._targets import smooth_labels
from smoothloss.backends import bind

__all__ = ["binary_cross_entropy"]


def _elementwise_weight(xp: Any, value: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """None, a Python number, or a floating array broadcastable to ``shape``, in ``dtype``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be None, a number or a floating array, got a bool")
    if isinstance(value, (int, float)):
        return float(value)
    if not V.is_floating(xp, value.dtype):
        raise TypeError(f"{name} must have a real floating dtype, got {value.dtype}")
    vshape = tuple(value.shape)
    fits = len(vshape) <= len(shape) and all(
        v in (1, s) for v, s in zip(reversed(vshape), reversed(shape))
    )
    if not fits:
        raise ValueError(f"{name} of shape {vshape} does not broadcast to the logits' shape {shape}")
    return value if value.dtype == dtype else xp.astype(value, dtype)


def binary_cross_entropy(
    logits: Any,
    targets: Any,
    *,
    label_smoothing: float = 0.0,
    target_threshold: float | None = None,
    weight: Any = None,
    pos_weight: Any = None,
    reduction: str = "mean",
    sum_classes: bool = False,
) -> Any:
    r"""Sigmoid cross-entropy on logits, with label smoothing, on any backend.

    Targets t, with K = ``logits.shape[-1]`` and ε = ``label_smoothing``:

    * integer class indices (the logits' shape without the last axis) become dense
      one-hot targets with ε/K off and 1-ε+ε/K on (timm ``BinaryCrossEntropy``);
    * except for a single-logit head (K = 1, logits (..., 1)): its integer labels (...)
      are the binary targets themselves, 0 or 1, smoothed towards 0.5 as floating
      targets are (Keras ``BinaryCrossentropy``, PyTorch ``BCEWithLogitsLoss``); a label
      other than 0 or 1 raises eagerly and gives NaN when traced;
    * floating targets (or integer 0/1 targets of the logits' shape) are smoothed
      towards 0.5: ``t·(1-ε) + ε/2`` (Keras ``BinaryCrossentropy``);
    * ``target_threshold`` then binarises them: ``t ← [t > threshold]`` (timm).

    Each element's loss is ``w·[(1-t)·x + (1 + (pw-1)·t)·softplus(-x)]``, which is
    ``w·[max(x, 0) - x·t + log1p(exp(-|x|))]`` without ``pos_weight``, as PyTorch's
    ``binary_cross_entropy_with_logits``; finite for any finite logit.

    Args:
        logits: floating array (..., K). 16-bit logits are upcast to float32 inside.
        targets: integer class indices (...), or targets of the logits' shape.
        label_smoothing: ε in [0, 1].
        target_threshold: if given, targets above it become 1 and the others 0.
        weight: per-element weight (a number or an array broadcastable to the logits).
        pos_weight: weight of the positive term, e.g. shape (K,) (broadcastable).
        reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.
        sum_classes: sum over the last axis first (timm): the mean is then over the
            examples, ``"none"`` gives one value per example.

    Returns:
        The loss: float32 for 16-bit logits, else the logits' dtype; the gradient
        comes from the framework's autodiff.

    Example:
        >>> import numpy as np, smoothloss
        >>> logits = np.array([[0.0, 2.0, -1.0]])
        >>> loss = smoothloss.binary_cross_entropy(logits, np.array([1]), label_smoothing=0.3)
        >>> round(float(loss), 4)
        0.5444

    References:
        timm ``timm/loss/binary_cross_entropy.py``; PyTorch
        ``F.binary_cross_entropy_with_logits``; Keras ``BinaryCrossentropy``.
    """
    fw, (logits, targets, weight, pos_weight) = bind(logits, targets, weight, pos_weight)
    xp = fw.xp
    eps = V.check_smoothing(label_smoothing)
    reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
    V.check_logits(xp, logits)
    if target_threshold is not None:
        if isinstance(target_threshold, bool) or not isinstance(target_threshold, (int, float)):
            raise TypeError(f"target_threshold must be None or a number, got {type(target_threshold).__name__}")
        target_threshold = float(target_threshold)
    shape = tuple(logits.shape)
    cdtype = compute_dtype(xp, logits.dtype)
    x = logits if logits.dtype == cdtype else xp.astype(logits, cdtype)

    if V.is_integer(xp, targets.dtype) and tuple(targets.shape) == shape[:-1] and shape[-1] == 1:
        # a single-logit head (N, 1) with labels (N,): the labels are its 0/1 targets
        V.check_label_values(fw, targets, 2, None)
        t = xp.astype(xp.expand_dims(fw.index(targets), axis=-1), cdtype)
        if not fw.is_concrete(targets):  # unchecked: a label other than 0 or 1 gives NaN
            t = xp.where((t == 0.0) | (t == 1.0), t, xp.nan)
        if eps:
            t = t * (1.0 - eps) + 0.5 * eps
    elif V.is_integer(xp, targets.dtype) and tuple(targets.shape) == shape[:-1]:
        t = smooth_labels(targets, shape[-1], label_smoothing=eps, dtype=cdtype)
    elif V.is_integer(xp, targets.dtype) or V.is_floating(xp, targets.dtype):
        if tuple(targets.shape) != shape:
            raise ValueError(
                f"targets must be class indices of shape {shape[:-1]} (integer) or have the "
                f"logits' shape {shape}, got {tuple(targets.shape)} of dtype {targets.dtype}"
            )
        t = targets if targets.dtype == cdtype else xp.astype(targets, cdtype)
        if eps:
            t = t * (1.0 - eps) + 0.5 * eps
    else:
        raise TypeError(f"targets must be integer or floating, got dtype {targets.dtype}")
    if target_threshold is not None:
        t = xp.astype(t > target_threshold, cdtype)

    w = _elementwise_weight(xp, weight, "weight", shape, cdtype)
    pw = _elementwise_weight(xp, pos_weight, "pos_weight", shape, cdtype)

    nonneg = x >= 0
    log_term = xp.log1p(xp.exp(xp.where(nonneg, -x, x)))  # log1p(exp(-|x|))
    if pw is None:
        loss = xp.where(nonneg, x, 0.0) - x * t + log_term
    else:
        softplus_neg = xp.where(nonneg, 0.0, -x) + log_term  # softplus(-x) = -log σ(x)
        loss = (1.0 - t) * x + ((pw - 1.0) * t + 1.0) * softplus_neg
    if w is not None:
        loss = loss * w
    if sum_classes:
        loss = xp.sum(loss, axis=-1)

    return reduce(xp, loss, reduction)[0]
