"""Argument checks shared by every public function.

Checks on Python values, dtypes and shapes always run (they cost nothing and work
while tracing). Checks that need array *values* (label ranges) run on the host where
the values can be read without a sync; where they cannot (under jax.jit, tf.function,
torch.compile), the binding adds the framework's own run-time check where it has one
(:func:`check_label_values`), so a traced call never syncs with the host.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from smoothloss._options import (  # noqa: F401 (the scalar checks, for the modules that check here)
    CONVENTIONS, RANGES, REDUCTIONS, check_choice, check_nonnegative, check_smoothing, check_softcap, is_int_scalar,
    is_real_scalar,
)


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    if not is_int_scalar(axis):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of rank {ndim}")
    return axis % ndim


def is_floating(xp: Any, dtype: Any) -> bool:
    return bool(xp.isdtype(dtype, "real floating"))


def is_integer(xp: Any, dtype: Any) -> bool:
    return bool(xp.isdtype(dtype, "integral"))


def check_logits(xp: Any, logits: Any, name: str = "logits") -> None:
    try:
        floating = is_floating(xp, logits.dtype)
    except TypeError:  # a dtype the namespace does not know, e.g. NumPy's ml_dtypes bfloat16
        floating = None
    if floating is None and str(logits.dtype) == "bfloat16":
        raise TypeError(
            f"{name} are a NumPy bfloat16 array (ml_dtypes), which NumPy cannot compute in; "
            f"cast them to float32 first (x.astype(np.float32)), or pass a JAX, PyTorch or "
            f"TensorFlow bfloat16 array, which smoothloss computes in float32"
        )
    if not floating:
        raise TypeError(
            f"{name} must have a real floating dtype, got {logits.dtype}; "
            f"cast them, e.g. to float32"
        )
    if logits.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the classes), got a scalar")


def check_targets(xp: Any, logits: Any, targets: Any, axis: int) -> bool:
    """Validate the target layout; return True for integer class indices."""
    expected_int = tuple(s for i, s in enumerate(logits.shape) if i != axis)
    if is_integer(xp, targets.dtype):
        if tuple(targets.shape) != expected_int:
            raise ValueError(
                f"integer targets must have the logits' shape without the class axis: "
                f"logits {tuple(logits.shape)} with axis={axis} needs targets {expected_int}, "
                f"got {tuple(targets.shape)}"
            )
        return True
    if is_floating(xp, targets.dtype):
        if tuple(targets.shape) != tuple(logits.shape):
            raise ValueError(
                f"probability targets must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(targets.shape)}; class indices must have an integer dtype"
            )
        return False
    raise TypeError(
        f"targets must be integer class indices or floating probabilities, got dtype {targets.dtype}"
    )


def check_weight(xp: Any, weight: Any, num_classes: int | None) -> None:
    """``num_classes`` None: K is known only at run time (then only the rank is checked)."""
    if weight is None:
        return
    if not is_floating(xp, weight.dtype):
        raise TypeError(f"weight must have a real floating dtype, got {weight.dtype}")
    if num_classes is None and weight.ndim == 1:
        return
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},) (one entry per class), got {tuple(weight.shape)}"
        )


def unknown_class_count(logits: Any, axis: int, kl: bool) -> bool:
    """Whether the class axis has a size known only at run time (a TensorFlow graph traced
    with ``tf.TensorSpec([None, None])``). The losses then read K at run time; the
    entropy term of ``kl=True`` needs K while tracing."""
    if logits.shape[axis] is not None:
        return False
    if kl:
        raise ValueError(
            f"kl=True needs the size of the class axis (axis={axis}) while tracing, and the logits' "
            f"shape is {tuple(logits.shape)}: give it in the input signature, e.g. "
            "tf.TensorSpec([None, 1000]) instead of [None, None]"
        )
    return True


def check_num_classes(num_classes: int, convention: str, smoothing: float) -> None:
    if num_classes == 1:
        raise ValueError(
            "the class axis has size K=1: a softmax over one class is always 1 and the loss "
            "is identically 0; use binary_cross_entropy for a single-logit head"
        )
    if num_classes == 0:
        raise ValueError("the class axis has size K=0")


def renamed_smoothing(label_smoothing: Any, smoothing: Any, *, required: bool = False, default: float = 0.0) -> Any:
    """``label_smoothing``, or the value of its former name ``smoothing=`` (with a
    ``DeprecationWarning``); both at once is a ``TypeError``."""
    if smoothing is None:
        if label_smoothing is None and required:
            raise TypeError("label_smoothing is required (a float in [0, 1])")
        return default if label_smoothing is None else label_smoothing
    if label_smoothing is not None:
        raise TypeError("give label_smoothing only; smoothing is its former name")
    warnings.warn(
        "the smoothing= keyword is deprecated; use label_smoothing=", DeprecationWarning, stacklevel=3
    )
    return smoothing


def check_label_values(fw: Any, labels: Any, num_classes: int, ignore_index: int | None) -> bool:
    """Eager-only: every label lies in [0, K) or equals ignore_index, compared as integer
    values whatever the labels' dtype (they are widened to the framework's index dtype
    first; an ``ignore_index`` that dtype cannot hold matches no label). Skipped for
    labels the framework ``fw`` cannot read without a host sync (tracers, meta and fake
    tensors, batched tensors under vmap): those get the framework's run-time check
    where it has one (:meth:`Framework.assert_labels`: TensorFlow graphs,
    ``torch.compile``, JAX under ``checkify`` when asked), and else NaN at such a position.

    Returns True when the labels were read and none equals ``ignore_index`` (the loss
    may then skip the ignore mask), else False."""
    if not fw.is_concrete(labels):
        if fw.run_time_checked(labels):
            _check_labels_at_run_time(fw, fw.index(labels), num_classes, ignore_index)
        return False
    if math.prod(labels.shape) == 0:
        return False
    xp = fw.xp
    y = fw.index(labels)
    ignoring = ignore_index is not None and fw.holds_index(ignore_index)
    # the fast path, one fused min/max where the framework has it: every label in range
    lo, hi = fw.bounds(y)
    if lo is None:  # concrete labels staged inside a jax.jit trace
        return False
    if lo >= 0 and hi < num_classes:
        return not ignoring or not 0 <= ignore_index < num_classes  # an ignore_index outside [0, K) is absent
    bad = (y < 0) | (y >= num_classes)
    if ignoring:
        bad = bad & (y != ignore_index)
    if not bool(xp.any(bad)):  # only ignored positions were outside [0, K)
        return False
    lo = int(xp.min(xp.where(bad, y, xp.max(y))))  # the smallest bad label
    hi = int(xp.max(xp.where(bad, y, xp.min(y))))  # the largest bad label
    shown = sorted({lo, hi})
    raise ValueError(f"{label_range(num_classes, ignore_index)}; found out-of-range values, e.g. {shown}")


def _check_labels_at_run_time(fw: Any, y: Any, num_classes: Any, ignore_index: int | None) -> None:
    """The label rule as the framework's run-time check (:meth:`Framework.check`), with
    the smallest and largest bad label where it can print them."""
    xp = fw.xp
    ok = (y >= 0) & (y < num_classes)
    if ignore_index is not None and fw.holds_index(ignore_index):
        ok = ok | (y == ignore_index)
    info = xp.iinfo(y.dtype)
    lo = xp.min(xp.where(ok, info.max, y))
    hi = xp.max(xp.where(ok, info.min, y))
    fw.check(ok, label_range(num_classes, ignore_index), lo, hi)


def check_array_options(fw: Any, arrays: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Options given as 0-d arrays (a schedule's ε), each checked against its declared
    range (:data:`smoothloss._options.RANGES`): on the host where ``fw`` reads it without
    a sync, else by the framework's run-time check where it has one. Returned in the
    compute ``dtype``; no gradient flows to them."""
    out = {}
    for name, value in arrays.items():
        valid, rule = RANGES[name]
        v = fw.read_scalar(value)
        if v is not None:
            if not valid(v):
                raise ValueError(f"{name} {rule}, got {v}")
        elif fw.run_time_checked(value):
            fw.check(valid(value), f"{name} {rule}", value, value)
        out[name] = fw.xp.astype(fw.detached(value), dtype)
    return out


def label_range(num_classes: Any, ignore_index: int | None) -> str:
    """The rule a label breaks, in words, for every framework's message."""
    k = num_classes if isinstance(num_classes, int) else "K"
    extra = "" if ignore_index is None else f" or equal ignore_index={ignore_index}"
    return f"labels must lie in [0, {k}){extra}"
