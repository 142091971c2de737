r"""optax-compatible losses on top of :func:`smoothloss.cross_entropy`.

Drop-in replacements for ``optax.softmax_cross_entropy``,
``optax.softmax_cross_entropy_with_integer_labels`` and ``optax.smooth_labels`` with one
addition, ``label_smoothing=ε``, on both losses (the integer one included: optax
issue 1486). Every loss is per example (no reduction) and is computed by the core
:func:`smoothloss.cross_entropy`, so it is jit-, vmap- and grad-safe, accumulates in at
least float32 and returns a float32 loss for bfloat16/float16 logits (optax returns a
16-bit loss there, optax issue 1020).

This module is configuration only. What it does around the core:

* ``axis``: an int is handed to the core; a tuple of axes (optax's flat-index layout) is
  moved to the end and flattened into one class axis first.
* ``where`` (optax semantics, read from ``optax/losses/_classification.py``): a boolean
  mask of the logits' shape, or of the logits' shape without ``axis`` (it is then
  expanded at ``axis``, so it masks whole examples; a class mask shared by all examples
  is therefore given as e.g. ``(1, K)``, not ``(K,)``). With W the classes where ``where``
  is True and ``K_W = |W|`` (per example):

  ``ℓ = -Σ_{c∈W} q_c log softmax_W(x)_c``, ``softmax_W(x)_c = exp(x_c) / Σ_{k∈W} exp(x_k)``,
  ``q = (1-ε)·t + ε/K_W`` on W,

  and an example with no class in W has ℓ = 0 and a zero gradient. The adapter gets
  exactly this from the core by building the inputs, not the loss: masked logits are
  replaced by a very negative finite number (half of ``finfo(dtype).min``, so that the
  core's differences with it cannot overflow; ``exp`` of it minus the logsumexp is
  exactly 0, so they leave the normaliser; not ``-inf``, because the core's
  ``0·(-log p)`` would then be ``0·inf = NaN``), masked targets by 0, and the smoothing
  ``(1-ε)·t + ε/K_W`` is applied before the core (which knows only one K per call).
  Both replacements are ``jnp.where`` selections, so masked logits, NaN included, get a
  gradient of exactly 0, as in optax. A mask over whole examples on integer labels
  keeps the core's integer path (no dense target); a mask over classes builds the
  dense one-hot target (the mask is dense already).

Deviation from optax, by design: in ``softmax_cross_entropy_with_integer_labels`` a
label that points at a masked class is excluded with its class, so the integer loss
equals ``softmax_cross_entropy(logits, one_hot(labels), where=where)`` for every ε.
optax itself disagrees between its two functions there: its integer version reads the
masked logit and returns ``logsumexp_W(x) - x_y``. ``axis`` and ``where`` may be given
positionally, as in optax. Other differences: ``label_smoothing`` is keyword-only and
a Python float in [0, 1] or a 0-d array (a traced value under ``jit``); eager calls
check label values (``ValueError`` for labels outside [0, K)), traced calls report
them only through ``checkify`` when :func:`checkify_labels` is on (else NaN).

Example:
    >>> import jax.numpy as jnp
    >>> from smoothloss.jax import softmax_cross_entropy_with_integer_labels
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> [round(v, 4) for v in softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])).tolist()]
    [0.2761, 2.9518]

References:
    optax ``optax/losses/_classification.py`` and ``optax/losses/_smoothing.py``;
    Müller et al., "When does label smoothing help?" (2019).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp

import smoothloss
from smoothloss import _options, _validation as V
from smoothloss.backends.jax import checkify_labels
from smoothloss.jax_parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

__all__ = [
    "checkify_labels",
    "linear_cross_entropy",
    "smooth_labels",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]

Axis = Union[int, Sequence[int]]


# ----------------------------------------------------------------------------- layout
def _class_axes(axis: Axis | None, ndim: int) -> tuple[int, ...]:
    """Normalised class axes, in the order given; ``None`` means every axis (as in optax).

    The order matters for integer labels: with a tuple ``axis`` a label is a row-major
    flat index over the class axes taken in that order, so ``axis=(3, 2)`` indexes
    ``logits.transpose(..., 3, 2)``, as in optax.
    """
    if axis is None:
        return tuple(range(ndim))
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        if isinstance(a, bool):
            raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}") from None
        out.append(V.normalize_axis(a, ndim))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"axis={axis!r} must name distinct axes, at least one")
    return tuple(out)


def _flatten(a: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Move the class ``axes`` to the end, in their given order, and merge them into one
    (optax's flat index)."""
    batch = tuple(i for i in range(a.ndim) if i not in axes)
    a = jnp.transpose(a, batch + axes)
    k = math.prod(a.shape[len(batch):])
    return jnp.reshape(a, a.shape[: len(batch)] + (k,))


def _layout(axes: tuple[int, ...], *arrays: jax.Array) -> tuple[int, list[jax.Array]]:
    """``(core_axis, arrays)``: one class axis for the core, the arrays rearranged to match."""
    if len(axes) == 1:
        return axes[0], list(arrays)
    return -1, [_flatten(a, axes) for a in arrays]


def _mask(where: Any, shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[jax.Array, bool]:
    """``(mask, per_example)``: optax's ``where`` broadcast to ``shape``.

    As in optax, a mask with fewer dimensions than the logits is expanded at the class
    axes. ``per_example`` is True when the mask has size 1 along every class axis (it
    selects whole examples, not classes); the mask is then returned with the class
    axes still of size 1.
    """
    where = jnp.asarray(where)
    given = where.shape
    if where.dtype != jnp.bool_:
        where = where.astype(jnp.bool_)
    if where.ndim != len(shape):
        where = jnp.expand_dims(where, tuple(a - len(shape) for a in axes))
    if where.ndim > len(shape):
        raise ValueError(f"where of shape {given} does not broadcast to the logits' shape {shape}")
    where = jnp.reshape(where, (1,) * (len(shape) - where.ndim) + where.shape)
    per_example = all(where.shape[a] == 1 for a in axes)
    target = tuple(1 if (per_example and i in axes) else s for i, s in enumerate(shape))
    try:
        where = jnp.broadcast_to(where, target)
    except ValueError:
        raise ValueError(f"where of shape {given} does not broadcast to the logits' shape {shape}") from None
    return where, per_example


def _compute_dtype(dtype: Any) -> Any:
    """The core's accumulation dtype: float32 for 16-bit floats, else the dtype itself."""
    return jnp.promote_types(dtype, jnp.float32)


# ----------------------------------------------------------------------------- masked core call
def _masked_dense(x: jax.Array, t: jax.Array, mask: jax.Array, axis: int, eps: Any) -> jax.Array:
    """The core's probability path restricted to the classes in ``mask`` (see the module doc)."""
    if _options.is_array_scalar(eps) or eps:
        k_w = jnp.sum(mask, axis=axis, keepdims=True, dtype=t.dtype)
        t = t * (1.0 - eps) + eps / jnp.maximum(k_w, 1.0)  # optax.smooth_labels(t, eps, where=mask)
    t = jnp.where(mask, t, jnp.zeros((), t.dtype))
    x = jnp.where(mask, x, jnp.asarray(_fill_value(x.dtype), x.dtype))
    return smoothloss.cross_entropy(x, t, axis=axis, reduction="none")


def _fill_value(dtype: Any) -> float:
    """A finite stand-in for ``-inf``: ``exp(fill - lse)`` is exactly 0 for any live logits.

    Half the dtype's minimum, so that ``fill - max`` and ``lse - fill`` stay finite for
    every live logit of magnitude below ``finfo.max / 2``. float16 keeps its own minimum:
    the core computes in float32, where -65504 is far from overflow and below every
    float16 logit.
    """
    info = jnp.finfo(dtype)
    return float(info.min) if float(info.max) < 1e30 else float(info.min) / 2


def _probabilities(labels: jax.Array, dtype: Any) -> jax.Array:
    """Labels as floating targets in the loss's compute dtype (optax multiplies any dtype)."""
    return labels if labels.dtype == dtype else labels.astype(dtype)


# ----------------------------------------------------------------------------- public API
def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis | None = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""Softmax cross-entropy against (optionally smoothed) probability targets, per example.

    With K classes along ``axis`` and ε = ``label_smoothing``:

    ``ℓ = -Σ_c q_c log softmax(x)_c`` with ``q = (1-ε)·t + ε/K``.

    With ``where``, only the classes W where it is True take part: the softmax runs
    over W, K becomes ``K_W = |W|`` per example, and an example with no class in W
    gives 0 (see the module docstring). For ε = 0 this is
    ``optax.softmax_cross_entropy(logits, labels, axis=axis, where=where)``; for ε > 0
    it is ``optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, ε,
    axis=axis, where=mask), axis=axis, where=where)`` with ``mask`` the ``where``
    broadcast to the logits' shape.

    Args:
        logits: floating logits; 16-bit logits give a float32 loss.
        labels: target probabilities, broadcastable to the logits' shape (any
            non-negative weights; they are not renormalised, as in optax).
        axis: the class axis, a tuple of axes, or ``None`` for all axes.
        where: optional boolean mask of the logits' shape (masks classes) or of the
            logits' shape without ``axis`` (masks examples).
        label_smoothing: ε in [0, 1]: a Python float, or a 0-d array (a traced value under
            ``jit``: a schedule compiles once; its range is checked where it can be read).

    Returns:
        The loss of each example: the logits' shape without the class axes.

    Example:
        >>> import jax.numpy as jnp
        >>> from smoothloss.jax import softmax_cross_entropy
        >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
        >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> [round(v, 4) for v in softmax_cross_entropy(logits, labels).tolist()]
        [0.2761, 2.9518]
        >>> [round(v, 4) for v in softmax_cross_entropy(logits, labels, label_smoothing=0.1).tolist()]
        [0.3995, 2.8051]
    """
    eps = _options.Options.checked(label_smoothing=label_smoothing).label_smoothing  # (a number or a 0-d array)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    V.check_logits(jnp, logits)
    try:
        shape = jnp.broadcast_shapes(logits.shape, labels.shape)
    except ValueError:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not broadcast with logits of shape {tuple(logits.shape)}"
        ) from None
    logits = jnp.broadcast_to(logits, shape)
    labels = _probabilities(jnp.broadcast_to(labels, shape), _compute_dtype(logits.dtype))
    axes = _class_axes(axis, logits.ndim)
    if where is None:
        core_axis, (x, t) = _layout(axes, logits, labels)
        return smoothloss.cross_entropy(x, t, axis=core_axis, label_smoothing=eps, reduction="none")
    mask, _ = _mask(where, shape, axes)
    core_axis, (x, t, m) = _layout(axes, logits, labels, jnp.broadcast_to(mask, shape))
    return _masked_dense(x, t, m, core_axis, eps)


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""Softmax cross-entropy against integer labels, optionally label-smoothed, per example.

    With K classes along ``axis``, label y and ε = ``label_smoothing``, without a dense
    target (the core's identity):

    ``ℓ = (1-ε)·(logsumexp(x) - x_y) + ε·mean_c(logsumexp(x) - x_c)``

    which is ``softmax_cross_entropy(logits, one_hot(y), label_smoothing=ε)``. For ε = 0
    it is ``optax.softmax_cross_entropy_with_integer_labels``; for ε > 0 it is what
    optax issue 1486 asks for, ``optax.softmax_cross_entropy(logits,
    optax.smooth_labels(one_hot(y), ε))``.

    ``where`` follows optax: a mask of the logits' shape restricts the softmax and the
    smoothing to the classes W where it is True (K becomes ``|W|`` per example; a dense
    one-hot target is built for this case), a mask without the class axis drops whole
    examples, and an example with no class in W gives 0. A label on a masked class is
    excluded with it (optax's integer function reads the masked logit there instead;
    see the module docstring).

    Args:
        logits: floating logits; 16-bit logits give a float32 loss.
        labels: integer class indices of the logits' shape without ``axis``; with a
            tuple ``axis``, flat indices into those axes taken in the order given
            (row-major), as in optax: ``axis=(3, 2)`` and ``axis=(2, 3)`` differ.
        axis: the class axis, or a tuple of axes.
        where: optional boolean mask of the logits' shape (masks classes) or of the
            logits' shape without ``axis`` (masks examples; their labels may be anything,
            e.g. a padding value).
        label_smoothing: ε in [0, 1]: a Python float, or a 0-d array (a traced value under
            ``jit``: a schedule compiles once; its range is checked where it can be read).

    Returns:
        The loss of each example: the labels' shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from smoothloss.jax import softmax_cross_entropy_with_integer_labels
        >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
        >>> labels = jnp.array([0, 1])
        >>> loss = softmax_cross_entropy_with_integer_labels(logits, labels)
        >>> [round(v, 4) for v in loss.tolist()]
        [0.2761, 2.9518]
        >>> loss = softmax_cross_entropy_with_integer_labels(logits, labels, label_smoothing=0.1)
        >>> [round(v, 4) for v in loss.tolist()]
        [0.3995, 2.8051]
    """
    eps = _options.Options.checked(label_smoothing=label_smoothing).label_smoothing  # (a number or a 0-d array)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    V.check_logits(jnp, logits)
    if not V.is_integer(jnp, labels.dtype):
        raise TypeError(
            f"labels must be integer class indices, got dtype {labels.dtype}; "
            "use softmax_cross_entropy for probability targets"
        )
    if axis is None:
        raise TypeError("axis must be an int or a tuple of ints, got None")
    axes = _class_axes(axis, logits.ndim)
    expected = tuple(s for i, s in enumerate(logits.shape) if i not in axes)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must have the logits' shape without the class axis: logits "
            f"{tuple(logits.shape)} with axis={axis!r} needs labels {expected}, got {tuple(labels.shape)}"
        )
    if where is None:
        core_axis, (x,) = _layout(axes, logits)
        return smoothloss.cross_entropy(x, labels, axis=core_axis, label_smoothing=eps, reduction="none")
    mask, per_example = _mask(where, logits.shape, axes)
    if per_example:
        # Masked examples get finite stand-in logits and label 0 (so padding labels pass
        # the eager range check); their loss and gradient are then zeroed by selection.
        keep = jnp.reshape(mask, tuple(s for i, s in enumerate(mask.shape) if i not in axes))
        core_axis, (x, m) = _layout(axes, logits, mask)
        x = jnp.where(m, x, jnp.zeros((), x.dtype))
        y = jnp.where(keep, labels, jnp.zeros((), labels.dtype))
        loss = smoothloss.cross_entropy(x, y, axis=core_axis, label_smoothing=eps, reduction="none")
        return jnp.where(keep, loss, jnp.zeros((), loss.dtype))
    core_axis, (x, m) = _layout(axes, logits, mask)
    # Examples with no class left may hold any label (padding): point it at class 0.
    live = jnp.any(m, axis=core_axis)
    y = jnp.where(live, labels, jnp.zeros((), labels.dtype))
    K = int(x.shape[core_axis])
    t = smoothloss.one_hot(y, K, dtype=_compute_dtype(x.dtype), axis=core_axis)
    return _masked_dense(x, t, m, core_axis, eps)


def smooth_labels(
    labels: jax.typing.ArrayLike,
    alpha: jax.typing.ArrayLike,
    axis: Axis | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Label smoothing, as ``optax.smooth_labels``: ``(1-α)·labels + α/K``.

    K is the number of classes along ``axis`` or, with ``where``, the number of True
    entries of ``where`` along ``axis`` (``jnp.sum(where, axis, keepdims=True)``, per
    example). As in optax, classes outside ``where`` get α/K too (the losses above
    exclude them), and an example with no class in ``where`` gets ``α/0 = inf``.

    A Python-float ``alpha`` without ``where`` is forwarded to
    :func:`smoothloss.smooth_labels`. The core smooths with one K per call and a Python
    float ε, so a ``where`` mask (a K per example) or an array ``alpha`` (e.g. a
    schedule value inside ``jit``) uses optax's one-line formula here.

    Args:
        labels: floating targets (one-hot or probabilities).
        alpha: the smoothing factor α; a Python float in [0, 1] or an array.
        axis: the class axis, a tuple of axes, or ``None`` for all axes.
        where: optional boolean mask of the classes that count in K.

    Returns:
        The smoothed labels, of the labels' shape and dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from smoothloss.jax import smooth_labels
        >>> [round(float(v), 4) for v in smooth_labels(jnp.array([[0.0, 1.0, 0.0, 0.0]]), 0.2)[0]]
        [0.05, 0.85, 0.05, 0.05]
    """
    labels = jnp.asarray(labels)
    if not V.is_floating(jnp, labels.dtype):
        raise TypeError(f"labels must be floating (one-hot or probabilities), got dtype {labels.dtype}")
    if isinstance(alpha, (bool, int, float)):
        alpha = V.check_smoothing(alpha, "alpha")
    axes = _class_axes(axis, labels.ndim)
    if where is None:
        if isinstance(alpha, float) and len(axes) == 1:
            return smoothloss.smooth_labels(labels, label_smoothing=alpha, axis=axes[0])
        num_classes: Any = math.prod(labels.shape[a] for a in axes)
    else:
        sum_axis = axis if axis is None or isinstance(axis, int) else tuple(axis)
        num_classes = jnp.sum(jnp.asarray(where), axis=sum_axis, keepdims=True)
    return (1.0 - alpha) * labels + alpha / num_classes


def linear_cross_entropy(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
    filter_eps: float | str | None = None,
) -> jax.Array:
    r"""The loss of ``hidden @ weight.T + bias`` without the N×V logits, as a JAX function.

    :func:`smoothloss.linear_cross_entropy` on JAX arrays (NumPy inputs are converted):
    ``hidden`` (..., H), ``weight`` (V, H) (a Flax ``Dense`` kernel is (H, V): pass
    ``kernel.T``), integer ``labels`` of shape ``hidden.shape[:-1]``. Unlike the optax-style
    functions above it reduces (``"mean"`` over the valid positions by default), because
    a scalar loss lets its ``jax.custom_jvp`` make the gradients for hidden, weight and
    bias in the same pass over the row chunks as the loss (forward and reverse mode);
    ``reduction="none"`` gives the per-position losses and a ``custom_vjp`` (reverse mode
    only) whose backward makes each chunk's logits again. The chunks run in a
    ``lax.scan``; under ``jit``, XLA drops the gradients nobody asks for. Options as in
    :func:`smoothloss.linear_cross_entropy`, ``filter_eps`` (gradient filtering) included:
    in the ``scan`` it gives the same gradient, made whole (no time saved).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from smoothloss.jax import linear_cross_entropy
        >>> h = jax.random.normal(jax.random.key(0), (6, 8))
        >>> w = 0.1 * jax.random.normal(jax.random.key(1), (50, 8))
        >>> y = jnp.array([3, 1, 7, 49, 0, 7])
        >>> step = jax.jit(jax.value_and_grad(
        ...     lambda w: linear_cross_entropy(h, w, y, label_smoothing=0.1, chunk_size=4)))
        >>> loss, dw = step(w)
        >>> dw.shape
        (50, 8)
    """
    hidden, weight, labels = jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(labels)
    return smoothloss.linear_cross_entropy(
        hidden, weight, labels, bias=None if bias is None else jnp.asarray(bias), chunk_size=chunk_size,
        filter_eps=filter_eps, **_options.given(
            label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
            reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
        ),
    )
