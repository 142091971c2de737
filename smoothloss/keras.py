"""Keras 3 losses computed by :func:`smoothloss.cross_entropy` and
:func:`smoothloss.binary_cross_entropy`, on every Keras backend.

``CategoricalCrossentropy``, ``SparseCategoricalCrossentropy`` and ``BinaryCrossentropy``
are drop-ins for Keras's losses of the same names: the same constructor arguments, the
same values and gradients, usable in ``model.compile(loss=...)`` and saved with the
model. They add ``label_smoothing`` to the sparse loss (Keras 3.15 has none there) and
smoothloss's options ``convention``, ``z_loss`` and ``softcap`` to the categorical ones.

Each class only holds configuration and forwards: ``call(y_true, y_pred)`` returns the
per-example loss (``reduction="none"`` of the core), and :class:`keras.losses.Loss`
applies ``sample_weight``, the ``ignore_class`` mask and the reduction exactly as it
does for Keras's own losses. So ``"sum_over_batch_size"`` (the default) with
``ignore_class`` is the mean over the valid entries, and 0 when every entry is ignored.

``from_logits=False`` (Keras's default): the probabilities ``p`` are turned into logits
``log(clip(p / Σ_c p_c, ε, 1-ε))`` with ``ε = keras.backend.epsilon()``, which is the
log-probability Keras itself uses; the core's log-softmax leaves them unchanged because
they already sum to 1. Only where clipping changes a probability (p below 1e-7 or above
1-1e-7) do the two differ, by at most about ``K·ε`` in absolute value. As in Keras on the
TensorFlow backend, a ``y_pred`` produced by a softmax activation is traced back to its
logits (``_keras_logits`` or the ``Softmax`` op) and those logits are used exactly.
``BinaryCrossentropy`` turns clipped probabilities into logits ``log(p) - log(1-p)``
(the sigmoid's inverse), whose binary cross-entropy is Keras's
``-[t·log p + (1-t)·log(1-p)]`` up to float32 rounding, and follows a sigmoid (the
``Sigmoid`` op, or ``_keras_logits``) back to its logits on TensorFlow, as Keras does.

``categorical_crossentropy``, ``sparse_categorical_crossentropy`` and
``binary_crossentropy`` are the functional forms, with Keras 3.15's signatures (plus the
classes' keyword-only options): like ``keras.losses.categorical_crossentropy`` and the
others they return the per-example loss, with no reduction and no ``sample_weight``
(``sparse_categorical_crossentropy`` with ``ignore_class`` returns 0 at the ignored
entries and sets them as the result's Keras mask, as Keras does). Each validates its
arguments as the class's constructor does and runs the same code as the class's
``call``. Where Keras warns, so do the classes and the functions, with Keras's message
and category: a ``SyntaxWarning`` when ``categorical_crossentropy`` gets
``y_pred.shape[-1] == 1``, and on TensorFlow a ``UserWarning`` when ``from_logits=True``
is given the output of a softmax (sigmoid for the binary loss), whose logits are then
used, as Keras uses them.

``LinearCrossEntropyHead`` is a layer rather than a loss: it owns the output projection
of a classifier or language-model head and computes the loss with
:func:`smoothloss.linear_cross_entropy`, so the N×V logits are never held (the class
of :mod:`smoothloss.keras_linear`).

Importing this module registers the classes and functions with Keras (package
``"smoothloss"``), so ``keras.models.load_model`` finds them without ``custom_objects`` once
``smoothloss.keras`` has been imported in the loading process.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, ClassVar

import keras
from keras import ops

import smoothloss
from smoothloss._options import Options, is_array_scalar
from smoothloss._keras_support import check_bool as _check_bool, check_int as _check_int
from smoothloss._keras_support import index_dtype as _index_dtype
from smoothloss.keras_linear import LinearCrossEntropyHead

try:  # Keras's own helper for the mask a loss hands to keras.losses.Loss
    from keras.src.backend import set_keras_mask as _set_keras_mask
except ImportError:  # pragma: no cover - Keras versions before the helper set the attribute

    def _set_keras_mask(x: Any, mask: Any) -> None:
        x._keras_mask = mask


try:  # what Keras's LossFunctionWrapper.call does to (y_true, y_pred) before its loss
    from keras.src.losses.loss import squeeze_or_expand_to_same_rank as _same_rank
except ImportError:  # pragma: no cover - then only equal shapes are accepted

    def _same_rank(x1: Any, x2: Any) -> tuple[Any, Any]:
        return x1, x2


__all__ = [
    "BinaryCrossentropy", "CategoricalCrossentropy", "LinearCrossEntropyHead", "SparseCategoricalCrossentropy",
    "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
]


def _warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)``, attributed to the first caller outside this
    module (the caller of a loss function, or Keras's ``Loss.__call__``), as Keras's
    ``stacklevel=2`` attributes its own to the caller of its loss function."""
    frame, stacklevel = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, category, stacklevel=stacklevel)


def _softmax_logits(y_pred: Any, op_type: str = "Softmax", *, from_logits: bool = False, fn_name: str = "") -> Any:
    """The logits behind a softmax (or, with ``op_type="Sigmoid"``, a sigmoid) output,
    where Keras's TensorFlow backend uses them.

    Mirrors ``keras/src/backend/tensorflow/nn.py::_get_logits``: on the TensorFlow
    backend, Keras's cross-entropies use the input of a softmax (categorical) or sigmoid
    (binary) activation instead of its output, whatever ``from_logits`` says: the cached
    ``_keras_logits`` of a Keras activation, or the input of the graph op. With
    ``from_logits=True`` Keras also warns (a ``UserWarning`` naming ``fn_name``, Keras's
    text, stray leading quote included), and so does this. Other backends never do this.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    logits = getattr(y_pred, "_keras_logits", None)
    if logits is None:
        op = getattr(y_pred, "op", None)  # graph tensors only; eager tensors have none
        if op is not None and op.type == op_type and len(op.inputs) == 1:
            logits = op.inputs[0]
    if logits is not None and from_logits:
        _warn(
            f'"`{fn_name}` received `from_logits=True`, but the `output` argument was produced '
            f"by a {op_type} activation and thus does not represent logits. Was this intended?"
        )
    return logits


# ----------------------------------------------------------------------------- shared by classes and functions
# Each loss is one validation (the class's constructor, or the function before it runs)
# and one computation (the class's ``call``, or the function after validating). The
# smoothloss options each takes, by their names in smoothloss._options:
_OPTIONS = ("label_smoothing", "axis", "convention", "z_loss", "softcap")
_BINARY_OPTIONS = ("label_smoothing", "axis")


def _checked(names: tuple[str, ...], given: dict[str, Any]) -> dict[str, Any]:
    """``from_logits``, the smoothloss options ``names`` and ``ignore_class`` where
    ``given`` (the constructor's or function's ``locals()``) has it, checked: Keras's
    arguments and ``axis`` as Keras takes them (a bool, Python ints), the smoothloss
    options by their declared checks."""
    from_logits = _check_bool(given["from_logits"], "from_logits")
    _check_int(given["axis"], "axis")
    options = Options.checked(**{name: given[name] for name in names})
    if not from_logits and (is_array_scalar(options.z_loss) or options.z_loss or options.softcap is not None):
        raise ValueError(
            "z_loss and softcap act on logits; pass logits to the loss and set "
            f"from_logits=True (got from_logits=False, z_loss={given['z_loss']}, softcap={given['softcap']})"
        )
    checked = {"from_logits": from_logits, **{name: getattr(options, name) for name in names}}
    if "ignore_class" in given:
        checked["ignore_class"] = _check_int(given["ignore_class"], "ignore_class", optional=True)
    return checked


def _logits(y_pred: Any, *, from_logits: bool, fn_name: str, axis: int = -1, follow: bool = True) -> Any:
    """``y_pred`` itself, or the logits of the probabilities ``y_pred`` (see the module
    doc): ``log(p) - log(1-p)`` for ``binary_crossentropy``, else the clipped
    log-probabilities along ``axis``; on TensorFlow, where ``follow``, the logits of a
    softmax's (for ``binary_crossentropy`` a sigmoid's) output."""
    binary = fn_name == "binary_crossentropy"
    if follow:
        logits = _softmax_logits(y_pred, "Sigmoid" if binary else "Softmax", from_logits=from_logits, fn_name=fn_name)
        if logits is not None:
            return logits
    if from_logits:
        return y_pred
    eps = keras.backend.epsilon()
    if not binary:
        return ops.log(ops.clip(y_pred / ops.sum(y_pred, axis=axis, keepdims=True), eps, 1.0 - eps))
    if keras.backend.standardize_dtype(y_pred.dtype) in ("float16", "bfloat16"):
        y_pred = ops.cast(y_pred, "float32")
    p = ops.clip(y_pred, eps, 1.0 - eps)
    return ops.log(p) - ops.log(1.0 - p)


def _dense(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Dense targets and predictions as tensors of ``y_pred``'s dtype, after Keras's
    backend check, with its text: the same rank, and the same size on every axis whose
    size is known."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    received = f"Received: target.shape={y_true.shape}, output.shape={y_pred.shape}"
    if len(y_true.shape) != len(y_pred.shape):
        raise ValueError(f"Arguments `target` and `output` must have the same rank (ndim). {received}")
    for a, b in zip(y_true.shape, y_pred.shape):
        if a is not None and b is not None and a != b:
            raise ValueError(f"Arguments `target` and `output` must have the same shape. {received}")
    return y_true, y_pred


def _categorical(y_true: Any, y_pred: Any, *, from_logits: bool, **options: Any) -> Any:
    """Per-example loss of :class:`CategoricalCrossentropy` and
    :func:`categorical_crossentropy`: ``y_pred``'s shape without ``axis``."""
    y_true, y_pred = _dense(y_true, y_pred)
    if y_pred.shape[-1] == 1:  # Keras's check and text (the last axis, whatever ``axis`` is)
        _warn(
            "In loss categorical_crossentropy, expected y_pred.shape to be (batch_size, "
            f"num_classes) with num_classes > 1. Received: y_pred.shape={y_pred.shape}. "
            "Consider using 'binary_crossentropy' if you only have 2 classes.",
            SyntaxWarning,
        )
    logits = _logits(y_pred, from_logits=from_logits, fn_name="categorical_crossentropy", axis=options["axis"])
    return smoothloss.cross_entropy(logits, y_true, reduction="none", **options)


def _sparse(y_true: Any, y_pred: Any, *, ignore_class: int | None, from_logits: bool, **options: Any) -> Any:
    """Per-example loss of :class:`SparseCategoricalCrossentropy` and
    :func:`sparse_categorical_crossentropy` (0 at ``ignore_class``, which is also set as
    the Keras mask)."""
    axis = options["axis"]
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[axis] == 1:
        y_true = ops.squeeze(y_true, axis=axis)
    # keras.losses.Loss hands labels over as floats; the core takes integer indices
    labels = ops.cast(y_true, _index_dtype())
    # Keras replaces ignored rows of y_pred before its crossentropy, which loses the
    # softmax's logits (and the warning); follow them only without ignore_class, as Keras does.
    fn_name, follow = "sparse_categorical_crossentropy", ignore_class is None
    logits = _logits(y_pred, from_logits=from_logits, fn_name=fn_name, axis=axis, follow=follow)
    loss = smoothloss.cross_entropy(logits, labels, ignore_index=ignore_class, reduction="none", **options)
    if ignore_class is not None:
        _set_keras_mask(loss, ops.not_equal(labels, ignore_class))
    return loss


def _binary(y_true: Any, y_pred: Any, *, from_logits: bool, label_smoothing: float, axis: int) -> Any:
    """Per-example loss of :class:`BinaryCrossentropy` and :func:`binary_crossentropy`:
    the mean of the element-wise losses along ``axis``."""
    y_true, y_pred = _dense(y_true, y_pred)
    logits = _logits(y_pred, from_logits=from_logits, fn_name="binary_crossentropy")
    loss = smoothloss.binary_cross_entropy(logits, y_true, label_smoothing=label_smoothing, reduction="none")
    return ops.mean(loss, axis=axis)


class _Loss(keras.losses.Loss):
    """Configuration and ``get_config`` of the losses below: Keras's ``reduction``,
    ``name`` and ``dtype`` go to :class:`keras.losses.Loss`; the rest is checked by
    ``_checked`` and kept as attributes, and ``call`` hands it on."""

    _OPTIONS: ClassVar[tuple[str, ...]] = _OPTIONS  # the smoothloss options it takes

    def __init__(self, given: dict[str, Any]) -> None:
        """``given``: the arguments of the subclass's constructor (its ``locals()``)."""
        dtype = given["dtype"]
        super().__init__(name=given["name"], reduction=given["reduction"], dtype=dtype)
        checked = _checked(self._OPTIONS, given)
        for key, value in checked.items():
            setattr(self, key, value)
        self._keys = tuple(checked)
        policy = dtype is not None and not isinstance(dtype, str)  # get_config gives it back serialized
        self._dtype_config = keras.dtype_policies.serialize(self._dtype_policy) if policy else dtype

    def _options(self) -> dict[str, Any]:
        """The checked arguments, as keyword arguments of the computation (a keras.Variable,
        e.g. a schedule's ε a callback assigns, as its backend tensor: no new trace)."""
        values = {key: getattr(self, key) for key in self._keys}
        return {key: v.value if isinstance(v, keras.Variable) else v for key, v in values.items()}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()  # name, reduction; a variable option as its value now (a number)
        config.update({k: float(ops.convert_to_numpy(v)) if is_array_scalar(v) else v
                       for k, v in self._options().items()}, dtype=self._dtype_config)
        return config



@keras.saving.register_keras_serializable(package="smoothloss")
class CategoricalCrossentropy(_Loss):
    r"""Cross-entropy between one-hot (or soft) labels and predictions, label-smoothed.

    Drop-in for ``keras.losses.CategoricalCrossentropy``: same arguments, same values.
    With K classes and ε = ``label_smoothing`` the target is ``q = (1-ε)·y_true + ε/K``
    (``convention="uniform"``, Keras's) and the per-example loss is
    ``-Σ_c q_c log p_c`` along ``axis``, computed by :func:`smoothloss.cross_entropy`.

    Args:
        from_logits: whether ``y_pred`` holds logits. If False (Keras's default) it holds
            probabilities, which are renormalised along ``axis`` and clipped to
            ``[ε, 1-ε]`` (``ε = keras.backend.epsilon()``) as in Keras.
        label_smoothing: ε in [0, 1].
        axis: the class axis of ``y_true`` and ``y_pred``.
        reduction: ``"sum_over_batch_size"`` (default), ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or ``None``, applied by
            :class:`keras.losses.Loss` exactly as for Keras's losses.
        name: the loss's name.
        dtype: the loss's computation dtype (``None``: ``keras.backend.floatx()``).
        convention: ``"uniform"`` (ε/K to every class, Keras) or ``"others"`` (the target
            keeps 1-ε, every other class gets ε/(K-1), fairseq/t5x).
        z_loss: coefficient of ``z_loss·logsumexp(logits)²`` per example (needs
            ``from_logits=True``).
        softcap: if given, ``logits ← softcap·tanh(logits/softcap)`` first (needs
            ``from_logits=True``).

    Example:
        >>> import numpy as np
        >>> from smoothloss.keras import CategoricalCrossentropy
        >>> y_true = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        >>> round(float(CategoricalCrossentropy()(y_true, y_pred)), 3)  # as Keras's
        1.177
        >>> loss = CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
        >>> round(float(loss(y_true, np.log(y_pred + 1e-3))), 3)
        1.303
    """

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "categorical_crossentropy",
        dtype: Any = None,
        *,
        convention: str = "uniform",
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__(locals())

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss: ``y_pred``'s shape without ``axis``. As in Keras's class, a
        ``y_true`` or ``y_pred`` with one more trailing axis of size 1 than the other is
        first brought to the other's rank."""
        return _categorical(*_same_rank(y_true, y_pred), **self._options())


@keras.saving.register_keras_serializable(package="smoothloss")
class SparseCategoricalCrossentropy(_Loss):
    r"""Cross-entropy between integer labels and predictions, with label smoothing.

    Drop-in for ``keras.losses.SparseCategoricalCrossentropy`` (same arguments, same
    values) that also takes ``label_smoothing``: the loss equals
    ``CategoricalCrossentropy(label_smoothing=ε)`` on the one-hot labels, computed
    without building them (``(1-ε)·(-log p_y) + ε·mean_c(-log p_c)``). ``y_true`` holds
    class indices of ``y_pred``'s shape without ``axis`` (a trailing size-1 axis is
    squeezed, as in Keras). ``ignore_class`` entries contribute 0 and are masked out of
    the reduction exactly as in Keras: the default ``"sum_over_batch_size"`` averages
    over the valid entries only, and gives 0 when none is valid.

    The positional order is Keras 3.15's (``from_logits, ignore_class, reduction, axis,
    name, dtype``); ``label_smoothing`` and the other additions are keyword-only, so no
    positional Keras call changes meaning.

    Args:
        from_logits: whether ``y_pred`` holds logits (see :class:`CategoricalCrossentropy`).
        ignore_class: a label value to ignore (e.g. -1 or 255), or ``None``.
        reduction: as in :class:`CategoricalCrossentropy`.
        axis: the class axis of ``y_pred`` (any axis, on every backend).
        name: the loss's name.
        dtype: the loss's computation dtype (``None``: ``keras.backend.floatx()``).
        label_smoothing: ε in [0, 1]; smoothing applies before the mask.
        convention: ``"uniform"`` (Keras) or ``"others"``, see :class:`CategoricalCrossentropy`.
        z_loss: coefficient of ``z_loss·logsumexp(logits)²`` per valid example.
        softcap: if given, ``logits ← softcap·tanh(logits/softcap)`` first.

    Example:
        >>> import numpy as np
        >>> from smoothloss.keras import SparseCategoricalCrossentropy
        >>> y_true = np.array([1, 2])
        >>> y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        >>> round(float(SparseCategoricalCrossentropy()(y_true, y_pred)), 3)  # as Keras's
        1.177
        >>> loss = SparseCategoricalCrossentropy(ignore_class=-1, label_smoothing=0.1)
        >>> round(float(loss(np.array([1, -1]), y_pred)), 3)  # mean over the valid entry
        0.685
    """

    def __init__(
        self,
        from_logits: bool = False,
        ignore_class: int | None = None,
        reduction: str | None = "sum_over_batch_size",
        axis: int = -1,
        name: str = "sparse_categorical_crossentropy",
        dtype: Any = None,
        *,
        label_smoothing: float = 0.0,
        convention: str = "uniform",
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__(locals())

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss (0 at ``ignore_class``, which is also set as the Keras mask)."""
        return _sparse(y_true, y_pred, **self._options())


@keras.saving.register_keras_serializable(package="smoothloss")
class BinaryCrossentropy(_Loss):
    r"""Binary (sigmoid) cross-entropy with label smoothing towards 0.5.

    Drop-in for ``keras.losses.BinaryCrossentropy``: same arguments, same values. With
    ε = ``label_smoothing`` the target becomes ``t·(1-ε) + ε/2`` and the loss is the mean
    along ``axis`` of the element-wise binary cross-entropy, computed from logits by
    :func:`smoothloss.binary_cross_entropy` (``max(x, 0) - x·t + log1p(exp(-|x|))``,
    finite for any finite logit). ``sample_weight`` and the reduction are applied by
    :class:`keras.losses.Loss`, as for Keras's own losses.

    With ``from_logits=False`` (Keras's default) ``y_pred`` holds probabilities: they
    are clipped to ``[ε, 1-ε]`` (``ε = keras.backend.epsilon()``) as Keras does and
    turned into logits ``log(p) - log(1-p)``; the loss is then Keras's
    ``-[t·log p + (1-t)·log(1-p)]`` up to rounding (float32: within 1e-5 relative),
    and the gradient is Keras's too (zero where clipping is active). 16-bit
    probabilities are converted to logits in float32 (where Keras's float16 arithmetic
    can give ``log(1 - 1) = -inf``). On the TensorFlow backend a ``y_pred`` made by a
    sigmoid is followed back to its logits, which are then used exactly, as Keras does.

    Args:
        from_logits: whether ``y_pred`` holds logits (else probabilities in [0, 1]).
        label_smoothing: ε in [0, 1].
        axis: the axis the element-wise losses are averaged over.
        reduction: ``"sum_over_batch_size"`` (default), ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or ``None``, applied by
            :class:`keras.losses.Loss` exactly as for Keras's losses.
        name: the loss's name.
        dtype: the loss's computation dtype (``None``: ``keras.backend.floatx()``).

    Example:
        >>> import numpy as np
        >>> from smoothloss.keras import BinaryCrossentropy
        >>> y_true = np.array([[0.0, 1.0], [0.0, 0.0]])
        >>> y_pred = np.array([[0.6, 0.4], [0.4, 0.6]])
        >>> round(float(BinaryCrossentropy()(y_true, y_pred)), 3)  # as Keras's
        0.815
        >>> logits = np.array([[-18.6, 0.51], [2.94, -12.8]])
        >>> round(float(BinaryCrossentropy(from_logits=True, label_smoothing=0.1)(y_true, logits)), 4)
        1.2276
    """

    _OPTIONS = _BINARY_OPTIONS

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "binary_crossentropy",
        dtype: Any = None,
    ) -> None:
        super().__init__(locals())

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss: the mean of the element-wise losses along ``axis``. As in
        Keras's class, labels (N,) with predictions (N, 1), or the reverse, are first
        brought to the same rank."""
        return _binary(*_same_rank(y_true, y_pred), **self._options())


# ----------------------------------------------------------------------------- functional forms
@keras.saving.register_keras_serializable(package="smoothloss")
def categorical_crossentropy(
    y_true: Any,
    y_pred: Any,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
    *,
    convention: str = "uniform",
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""Per-example categorical cross-entropy, label-smoothed: the functional form of
    :class:`CategoricalCrossentropy`.

    Drop-in for ``keras.losses.categorical_crossentropy``: the same positional
    arguments, the same values and gradients, and no reduction (``y_pred``'s shape
    without ``axis``). It validates its arguments as :class:`CategoricalCrossentropy`
    does and computes what that class's ``call`` computes. With K = ``y_true.shape[axis]``
    the smoothed target is ``(1-ε)·y_true + ε/K``; Keras 3.15 divides by
    ``y_true.shape[-1]`` even when ``axis`` is another axis, where its target does not
    sum to 1 (as for the class, ours uses the class axis). Warns as Keras does: a
    ``SyntaxWarning`` when ``y_pred.shape[-1] == 1``, and on TensorFlow a ``UserWarning``
    when ``from_logits=True`` is given a softmax's output (whose logits are then used).

    Args:
        y_true: one-hot (or soft) targets, of ``y_pred``'s shape.
        y_pred: probabilities (renormalised along ``axis`` and clipped to ``[ε, 1-ε]``,
            ``ε = keras.backend.epsilon()``, as in Keras), or logits if ``from_logits``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: ε in [0, 1].
        axis: the class axis of ``y_true`` and ``y_pred``.
        convention: ``"uniform"`` (ε/K to every class, Keras) or ``"others"`` (see
            :class:`CategoricalCrossentropy`).
        z_loss: coefficient of ``z_loss·logsumexp(logits)²`` per example (needs
            ``from_logits=True``).
        softcap: if given, ``logits ← softcap·tanh(logits/softcap)`` first (needs
            ``from_logits=True``).

    Returns:
        The per-example loss, a tensor of ``y_pred``'s shape without ``axis``.

    Example:
        >>> import keras, numpy as np
        >>> from smoothloss.keras import categorical_crossentropy
        >>> y_true = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        >>> print(np.round(keras.ops.convert_to_numpy(categorical_crossentropy(y_true, y_pred)), 4))  # as Keras's
        [0.0513 2.3026]
        >>> logits = np.log(y_pred + 1e-3)
        >>> loss = categorical_crossentropy(y_true, logits, from_logits=True, label_smoothing=0.1)
        >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
        [0.3793 2.2266]
    """
    return _categorical(y_true, y_pred, **_checked(_OPTIONS, locals()))


@keras.saving.register_keras_serializable(package="smoothloss")
def sparse_categorical_crossentropy(
    y_true: Any,
    y_pred: Any,
    from_logits: bool = False,
    ignore_class: int | None = None,
    axis: int = -1,
    *,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""Per-example cross-entropy against integer labels, with label smoothing: the
    functional form of :class:`SparseCategoricalCrossentropy`.

    Drop-in for ``keras.losses.sparse_categorical_crossentropy``: the same positional
    arguments, the same values and gradients, and no reduction. It validates its
    arguments as :class:`SparseCategoricalCrossentropy` does and computes what that
    class's ``call`` computes, so it also takes ``label_smoothing`` (Keras 3.15's has
    none) and any ``axis`` (Keras's TensorFlow backend takes the last one only).
    ``ignore_class`` entries are 0 and the result's Keras mask marks the valid ones, as
    in Keras. On TensorFlow, without ``ignore_class``, a softmax's output is followed
    back to its logits, with Keras's ``UserWarning`` when ``from_logits=True``.

    Args:
        y_true: class indices, of ``y_pred``'s shape without ``axis`` (a size-1 ``axis``
            is squeezed, as in Keras).
        y_pred: probabilities (see :func:`categorical_crossentropy`), or logits if
            ``from_logits``.
        from_logits: whether ``y_pred`` holds logits.
        ignore_class: a label value to ignore (e.g. -1 or 255), or ``None``.
        axis: the class axis of ``y_pred``.
        label_smoothing: ε in [0, 1]; the loss equals :func:`categorical_crossentropy`
            on the one-hot labels.
        convention: ``"uniform"`` (Keras) or ``"others"``, see :class:`CategoricalCrossentropy`.
        z_loss: coefficient of ``z_loss·logsumexp(logits)²`` per valid example.
        softcap: if given, ``logits ← softcap·tanh(logits/softcap)`` first.

    Returns:
        The per-example loss, a tensor of ``y_pred``'s shape without ``axis``.

    Example:
        >>> import keras, numpy as np
        >>> from smoothloss.keras import sparse_categorical_crossentropy
        >>> y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        >>> loss = sparse_categorical_crossentropy(np.array([1, 2]), y_pred)
        >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
        [0.0513 2.3026]
        >>> loss = sparse_categorical_crossentropy(
        ...     np.array([1, -1]), y_pred, ignore_class=-1, label_smoothing=0.1
        ... )
        >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
        [0.685 0.   ]
    """
    return _sparse(y_true, y_pred, **_checked(_OPTIONS, locals()))


@keras.saving.register_keras_serializable(package="smoothloss")
def binary_crossentropy(
    y_true: Any, y_pred: Any, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1
) -> Any:
    r"""Per-example binary cross-entropy with label smoothing towards 0.5: the functional
    form of :class:`BinaryCrossentropy`.

    Drop-in for ``keras.losses.binary_crossentropy``: the same arguments, the same values
    and gradients, and no reduction (the mean of the element-wise losses along
    ``axis``). It validates its arguments as :class:`BinaryCrossentropy` does and
    computes what that class's ``call`` computes: the target ``t·(1-ε) + ε/2``, and
    probabilities clipped to ``[ε, 1-ε]`` as in Keras. On TensorFlow a sigmoid's output
    is followed back to its logits, with Keras's ``UserWarning`` when ``from_logits=True``.

    Args:
        y_true: targets in [0, 1], of ``y_pred``'s shape.
        y_pred: probabilities in [0, 1], or logits if ``from_logits``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: ε in [0, 1].
        axis: the axis the element-wise losses are averaged over.

    Returns:
        The per-example loss, a tensor of ``y_pred``'s shape without ``axis``.

    Example:
        >>> import keras, numpy as np
        >>> from smoothloss.keras import binary_crossentropy
        >>> y_true = np.array([[0.0, 1.0], [0.0, 0.0]])
        >>> y_pred = np.array([[0.6, 0.4], [0.4, 0.6]])
        >>> print(np.round(keras.ops.convert_to_numpy(binary_crossentropy(y_true, y_pred)), 4))
        [0.9163 0.7136]
        >>> logits = np.array([[-18.6, 0.51], [2.94, -12.8]])
        >>> print(np.round(keras.ops.convert_to_numpy(binary_crossentropy(y_true, logits, True, 0.1)), 4))
        [0.7129 1.7423]
    """
    return _binary(y_true, y_pred, **_checked(_BINARY_OPTIONS, locals()))
