"""The TensorFlow binding's XLA-compiled kernel: the closed-form backward as a
``tf.function(jit_compile=True)``, the varying options
(:data:`smoothloss._options.VARYING`) as tensor inputs, so that a schedule traces once.
:func:`wanted` decides whether an eager call runs them.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from smoothloss import _core, _linear, _options
from smoothloss.backends import tensorflow_namespace
from smoothloss.backends._autodiff import Closed
from smoothloss.backends._base import Kernels, compile_failed, compile_wanted
from smoothloss.backends.tensorflow import FW, TensorflowFramework, _scatter_at_labels
from smoothloss.backends.tensorflow import while_loop

__all__ = ["COMPILE_THRESHOLD", "XLA", "XlaClosed", "chunk_loop", "wanted"]

# Calls on at least this many logits run the XLA-compiled kernels under
# set_compile_mode("auto"); below, TensorFlow's own kernels are as fast (the path table
# in docs/transforms.md).
COMPILE_THRESHOLD = int(os.environ.get("SMOOTHLOSS_COMPILE_THRESHOLD", 1 << 21))


def chunk_loop(run: Any, *args: Any) -> Any:
    """The chunked loss's loop over its row chunks: a Python ``for`` eagerly, a
    ``tf.while_loop`` inside a graph."""
    if tf.executing_eagerly():
        return _linear.python_loop(run, *args)
    return while_loop(run, *args)


class _GraphKernels(Kernels):
    """The Array-API composition that XLA fuses, but for the label term of the gradient:
    a scatter (TensorFlow's own kernel's) instead of a compare and select at every logit,
    which XLA:CPU's backward loop runs slower."""

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        return _scatter_at_labels(g, labels, values)


class _ReferenceBinding(TensorflowFramework):
    """The binding whose kernels are the compiled graphs', whatever the kernels switch:
    the Array-API composition, with the label term as a scatter."""

    native_kernel_class = _GraphKernels

    @property
    def kernels(self) -> Kernels:
        return self.native


_REFERENCE = _ReferenceBinding(tensorflow_namespace)


class XlaClosed(Closed):
    """The closed form whose backward is a ``tf.function`` with ``jit_compile=True``: XLA
    fuses it into one loop that reads the logits and writes the gradient, with no other
    B×K temporary. It is traced once per dtype and option set (the varying options are
    tensor inputs; ``reduce_retracing``: a new batch size does not retrace), compiled
    by XLA per shape; inside a caller's graph it is a nested XLA cluster. The forward
    is TensorFlow's own kernels (see :meth:`TensorflowKernels.log_softmax_stats`):
    XLA:CPU materialises the operand of each row reduction, so a compiled log-sum-exp
    would hold x - m and exp(x - m) at once, and compiled row sums were no faster
    (docs/transforms.md). An eager compile that fails warns once per process; the
    eager kernels run from then on."""

    compiled = True

    def __init__(self) -> None:
        super().__init__(FW, loop=chunk_loop)
        self.broken: str | None = None
        self.calls = {"backward": 0}  # eager compiled calls made (the tests read them)
        self.kernels_by_name = {
            "backward": (tf.function(_ranked(_xla_backward), jit_compile=True, autograph=False, reduce_retracing=True),
                         _eager_backward),
        }

    def run(self, name: str, *args: Any) -> Any:
        """The compiled kernel ``name`` of ``args``; its eager version where compiling failed."""
        compiled, eager = self.kernels_by_name[name]
        if not tf.executing_eagerly():  # in a graph: nothing runs (or can fail) until the graph runs
            return compiled(args[0].shape.rank, *args)
        if self.broken is None:
            try:
                out = compiled(args[0].shape.rank, *args)
                self.calls[name] += 1
                return out
            except tf.errors.ResourceExhaustedError:
                raise  # out of memory: not a compiler failure, and eager kernels need no less
            except Exception as e:  # noqa: BLE001 (whatever XLA raised: fall back, once)
                self.broken = compile_failed("XLA", e)
        return eager(*args)

    def backward(self, logits: Any, targets: Any, weight: Any, opts: _core.Options, stats: Any, scale: Any,
                        loss: Any, cotangent: Any, needs: tuple[bool, bool, bool] = (True, False, False)) -> Any:
        # Python floats (the chunked loss's scale and cotangent) as tensors: a function
        # traces again for every new Python value it is given
        scale, cotangent = (tf.constant(v, stats.dtype) if isinstance(v, float) else v for v in (scale, cotangent))
        # the varying options as tensor inputs: one trace serves every value of a schedule
        shape, values = _options.split(opts)
        # (a Python float as a constant of the dtype: tf.cast would round it to float32 first)
        values = tuple(None if v is None else tf.constant(v, stats.dtype) if isinstance(v, float)
                       else tf.cast(v, stats.dtype) for v in values)
        return self.run("backward", logits, targets, weight, shape, values, stats, scale, loss, cotangent, needs)



def _ranked(fn: Any) -> Any:
    """``fn`` with a leading argument, the rank of its first: a Python value, so that
    traces of arrays of different ranks are kept apart (``reduce_retracing`` would
    otherwise relax them to an unknown rank, which the kernels cannot take)."""

    def ranked(rank: Any, *args: Any) -> Any:
        return fn(*args)

    ranked.__name__ = fn.__name__
    return ranked


def _xla_backward(logits: Any, targets: Any, weight: Any, shape: _core.Options, values: Any, *rest: Any) -> Any:
    return _core.backward(_REFERENCE, logits, targets, weight, _options.join(shape, values), *rest)


def _eager_backward(logits: Any, targets: Any, weight: Any, shape: _core.Options, values: Any, *rest: Any) -> Any:
    return _core.backward(FW, logits, targets, weight, _options.join(shape, values), *rest)


XLA = XlaClosed()


def wanted(numel: int | None) -> bool:
    """Whether a call on ``numel`` logits runs the XLA kernels: by the compile mode and the
    number of logits where it is known (None, an unknown dimension in a graph, counts as
    below the threshold: under "auto" such calls are left to the caller's own compiler)."""
    return XLA.broken is None and compile_wanted(numel, COMPILE_THRESHOLD)
