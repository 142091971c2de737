"""TensorFlow face of smoothloss: the core functions on ``tf.Tensor`` inputs.

The closed-form gradient is registered with ``tf.custom_gradient``, so
``tf.GradientTape`` never keeps a B×K log-softmax. Everything works eagerly, inside
``tf.function`` and inside ``tf.function(jit_compile=True)`` (XLA); value checks on
labels run eagerly only.

Example:
    >>> import tensorflow as tf
    >>> from smoothloss import tensorflow as sltf
    >>> logits = tf.Variable([[2.0, 0.5, -1.0]])
    >>> with tf.GradientTape() as tape:
    ...     loss = sltf.cross_entropy(logits, tf.constant([0]), label_smoothing=0.1)
    >>> round(float(loss), 4)
    0.3913
    >>> tape.gradient(loss, logits).shape
    TensorShape([1, 3])
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

import smoothloss as _sl

__all__ = ["cross_entropy", "cross_entropy_and_grad", "linear_cross_entropy", "one_hot", "smooth_labels"]


def _tensor(x: Any) -> Any:
    return x if x is None or isinstance(x, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(x)


def cross_entropy(logits: Any, targets: Any, **options: Any) -> Any:
    """:func:`smoothloss.cross_entropy` on TensorFlow; NumPy inputs are converted."""
    if "weight" in options:
        options["weight"] = _tensor(options["weight"])
    return _sl.cross_entropy(_tensor(logits), _tensor(targets), **options)


def cross_entropy_and_grad(logits: Any, targets: Any, **options: Any) -> tuple[Any, Any]:
    """:func:`smoothloss.cross_entropy_and_grad` on TensorFlow; NumPy inputs are converted."""
    if "weight" in options:
        options["weight"] = _tensor(options["weight"])
    return _sl.cross_entropy_and_grad(_tensor(logits), _tensor(targets), **options)


def linear_cross_entropy(hidden: Any, weight: Any, labels: Any, *, bias: Any = None, **options: Any) -> Any:
    """:func:`smoothloss.linear_cross_entropy` on TensorFlow (``tf.Variable`` weights
    welcome; NumPy inputs are converted). ``weight`` is (V, H): a Keras ``Dense`` kernel
    is (H, V), pass ``tf.transpose(kernel)``. The gradient is registered with
    ``tf.custom_gradient``; under an eager tape or inside ``tf.function``, for
    ``"mean"``/``"sum"``, it is made in the same pass over the row chunks as the loss."""
    return _sl.linear_cross_entropy(
        _tensor(hidden), _tensor(weight), _tensor(labels), bias=_tensor(bias), **options
    )


def one_hot(labels: Any, num_classes: int, **options: Any) -> Any:
    """:func:`smoothloss.one_hot` on TensorFlow."""
    return _sl.one_hot(_tensor(labels), num_classes, **options)


def smooth_labels(labels: Any, num_classes: int | None = None, **options: Any) -> Any:
    """:func:`smoothloss.smooth_labels` on TensorFlow."""
    return _sl.smooth_labels(_tensor(labels), num_classes, **options)
