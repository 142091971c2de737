"""Soft targets: one-hot and label smoothing, on any Array-API backend."""

from __future__ import annotations

from typing import Any

from smoothloss import _validation as V
from smoothloss._formulas import smoothing_coefficients
from smoothloss.backends import bind

__all__ = ["one_hot", "smooth_labels"]


def one_hot(
    labels: Any,
    num_classes: int,
    *,
    on_value: float = 1.0,
    off_value: float = 0.0,
    dtype: Any = None,
    axis: int = -1,
) -> Any:
    """Dense targets from integer class indices: ``on_value`` at the label, ``off_value`` elsewhere.

    Args:
        labels: integer array of class indices in ``[0, num_classes)``.
        num_classes: K, the size of the new class axis.
        on_value: the value written at each label.
        off_value: the value written everywhere else.
        dtype: floating dtype of the result (default float32).
        axis: where the new class axis goes in the result.

    Returns:
        An array of shape ``labels.shape`` with a K-sized axis inserted at ``axis``,
        on the labels' device.

    Example:
        >>> import numpy as np, smoothloss
        >>> smoothloss.one_hot(np.array([0, 2]), 3).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    fw, (labels,) = bind(labels)
    xp = fw.xp
    if not V.is_integer(xp, labels.dtype):
        raise TypeError(f"one_hot needs integer labels, got dtype {labels.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    axis = V.normalize_axis(axis, labels.ndim + 1)
    V.check_label_values(fw, labels, num_classes, None)
    dtype = xp.float32 if dtype is None else dtype
    dev = fw.device(labels)
    y = fw.index(labels)  # compared in the index dtype: a narrow dtype would wrap at K
    classes = xp.arange(num_classes, dtype=y.dtype, device=dev)
    hit = xp.expand_dims(y, axis=-1) == classes
    out = xp.where(
        hit,
        xp.asarray(on_value, dtype=dtype, device=dev),
        xp.asarray(off_value, dtype=dtype, device=dev),
    )
    if axis != labels.ndim:
        out = xp.moveaxis(out, -1, axis)
    return out


def smooth_labels(
    labels: Any,
    num_classes: int | None = None,
    *,
    label_smoothing: float | None = None,
    convention: str = "uniform",
    axis: int = -1,
    dtype: Any = None,
    smoothing: float | None = None,
) -> Any:
    """Label-smoothed target distributions.

    Integer labels become ``one_hot(labels, K, on_value=on, off_value=off)``; floating
    (dense) labels t become ``(on - off)·t + off`` along ``axis``, where
    ``(on, off) = (1-ε+ε/K, ε/K)`` for ``"uniform"`` and ``(1-ε, ε/(K-1))`` for ``"others"``.

    Args:
        labels: integer class indices, or floating targets with the classes along ``axis``.
        num_classes: K; required for integer labels, read from ``labels.shape[axis]``
            (and checked if given) for floating ones.
        label_smoothing: ε in [0, 1] (required).
        convention: ``"uniform"`` or ``"others"``.
        axis: the class axis of the result.
        dtype: floating dtype of the result (default: float32 for integer labels,
            the labels' dtype for floating ones).
        smoothing: the former name of ``label_smoothing``; accepted with a
            ``DeprecationWarning``.

    Example:
        >>> import numpy as np, smoothloss
        >>> smoothloss.smooth_labels(np.array([1]), 4, label_smoothing=0.2).tolist()
        [[0.05000000074505806, 0.8500000238418579, 0.05000000074505806, 0.05000000074505806]]
    """
    fw, (labels,) = bind(labels)
    xp = fw.xp
    eps = V.check_smoothing(V.renamed_smoothing(label_smoothing, smoothing, required=True))
    convention = V.check_choice("convention", convention, V.CONVENTIONS)
    if V.is_integer(xp, labels.dtype):
        if num_classes is None:
            raise ValueError("num_classes is required for integer labels")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        on, off = smoothing_coefficients(eps, num_classes, convention)
        return one_hot(labels, num_classes, on_value=on, off_value=off, dtype=dtype, axis=axis)
    if not V.is_floating(xp, labels.dtype):
        raise TypeError(f"labels must be integer indices or floating targets, got dtype {labels.dtype}")
    axis = V.normalize_axis(axis, labels.ndim)
    K = int(labels.shape[axis])
    if num_classes is not None and num_classes != K:
        raise ValueError(f"num_classes={num_classes} does not match labels.shape[{axis}]={K}")
    on, off = smoothing_coefficients(eps, K, convention)
    t = labels if dtype is None or labels.dtype == dtype else xp.astype(labels, dtype)
    return t * (on - off) + off
