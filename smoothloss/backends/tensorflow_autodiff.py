"""The TensorFlow autodiff layer: the closed-form gradients with ``tf.custom_gradient``,
and :class:`TensorflowLosses`, the one place that chooses a call's path.

The dense loss's gradient function is written in TensorFlow ops on the saved inputs, so
nested ``GradientTape``\\ s differentiate it again (second derivatives) and
``tf.autodiff.ForwardAccumulator`` gets forward mode from it. The chunked linear loss
supports first derivatives.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from smoothloss import _core, _linear
from smoothloss.backends import tensorflow_compiled
from smoothloss.backends._autodiff import Closed, Losses, refuse_class_weight
from smoothloss.backends._base import _numel, native_kernels
from smoothloss.backends.tensorflow import FW
from smoothloss.backends.tensorflow_compiled import XLA, chunk_loop

__all__ = ["LOSSES", "TensorflowLosses"]


class TensorflowLosses(Losses):
    """TensorFlow's entry points. The path table: the XLA-compiled closed form
    (:data:`~smoothloss.backends.tensorflow_compiled.XLA`) where
    :func:`~smoothloss.backends.tensorflow_compiled.wanted` says so, else the eager
    kernels, with a forward that makes only what the logits' gradient reads where that
    is all the backward needs; a backward watched by a tape (second derivatives)
    recomputes with the Array-API composition."""

    def closed(self, like: Any, numel: Any, **signature: Any) -> Closed:
        return XLA if tensorflow_compiled.wanted(numel) else self.eager

    def cross_entropy(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        floating = targets.dtype.is_floating
        closed = self.closed(logits, _numel(logits))  # XLA-compiled where it pays
        # the logits' gradient alone, from the eager kernels: the forward makes no statistic
        # that the backward does not read (fewer ops, which is what an eager call costs)
        lean = closed is self.eager and weight is None and not floating

        @tf.custom_gradient
        def loss_fn(logits: Any, targets: Any, *maybe_weight: Any) -> Any:
            w = maybe_weight[0] if maybe_weight else None
            if lean:
                loss, stats, scale = _core.forward(FW, logits, targets, w, opts, stats=False)
            else:
                loss, stats, scale = closed.forward(logits, targets, w, opts)

            def grad(cotangent: Any) -> Any:
                needs = (True, floating, w is not None)
                if tf.executing_eagerly() and _recording():  # a tape watches the backward
                    with native_kernels(False):
                        l2, stats2, scale2 = _core.forward(FW, logits, targets, w, opts)
                        g = _core.backward(FW, logits, targets, w, opts, stats2, scale2, l2, cotangent, needs)
                else:
                    g = closed.backward(logits, targets, w, opts, stats, scale, loss, cotangent, needs)
                return (g[0], g[1]) + ((g[2],) if w is not None else ())

            return loss, grad

        return loss_fn(logits, targets) if weight is None else loss_fn(logits, targets, weight)

    def linear_cross_entropy(
        self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, class_weight: Any = None
    ) -> Any:
        refuse_class_weight(class_weight)
        closed = self.linear_closed(hidden, weight, opts, chunk)  # each chunk's closed form, XLA-compiled where it pays
        needs = (True, True, True) if _recording() else (False, False, False)

        @tf.custom_gradient
        def loss_fn(hidden: Any, weight: Any, *maybe_bias: Any) -> Any:
            b = maybe_bias[0] if maybe_bias else None
            loss, stats, scale, grads = _linear.chunked_forward(closed, hidden, weight, b, labels, opts, chunk, needs)

            def grad(cotangent: Any) -> Any:
                if grads is not None:
                    d = tuple(None if g is None else g * tf.cast(cotangent, g.dtype) for g in grads)
                else:
                    d = _linear.chunked_backward(closed, hidden, weight, b, labels, opts, chunk, stats, scale, cotangent)
                return d[:2] + ((d[2],) if b is not None else ())

            return loss, grad

        return loss_fn(hidden, weight) if bias is None else loss_fn(hidden, weight, bias)


def _recording() -> bool:
    """Whether a gradient may be asked for: inside a graph (where unused results are
    pruned) always, eagerly while a tape records."""
    if not tf.executing_eagerly():
        return True
    try:
        from tensorflow.python.eager import record
    except ImportError:  # private module moved: assume a tape
        return True
    return bool(record.could_possibly_record())


LOSSES = TensorflowLosses(FW, Closed(FW, loop=chunk_loop))
