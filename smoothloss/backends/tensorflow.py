"""The TensorFlow binding: the declared namespace shim, graph-aware value checks, native
kernels, the chunk loop as a ``tf.while_loop`` in graphs, and the closed-form gradients
with ``tf.custom_gradient``.

The dense loss's gradient function is written in TensorFlow ops on the saved inputs, so
nested ``GradientTape``\\ s differentiate it again (second derivatives) and
``tf.autodiff.ForwardAccumulator`` gets forward mode from it. The chunked linear loss
supports first derivatives.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from smoothloss import _core, _linear
from smoothloss._formulas import compute_dtype, shifted_nll
from smoothloss.backends import tensorflow_namespace
from smoothloss.backends._base import (
    Framework, Kernels, _affine, _numel, compile_failed, compile_wanted, native_kernels,
)

__all__ = ["TensorflowFramework"]


# Rows shorter than this take every forward statistic off one fused log_softmax (fewer
# ops); longer rows take the sums over x - m and the fused softmax (fewer passes at the
# speed of TensorFlow's softmax). Measured, forward statistics in a tf.function, 2
# threads: 0.59 against 0.72 ms at 4096×10, 1.48 against 1.41 ms at 4096×100, 2.8
# against 2.4 ms at 1024×1000.
SHORT_ROWS = 100


class TensorflowKernels(Kernels):
    """``tf.nn.log_softmax``, ``tf.nn.softmax`` and ``tf.tensor_scatter_nd_add``."""

    def log_softmax_stats(
        self, x: Any, weight: Any = None, sum_w: Any = None, labels: Any = None, *, stats: bool = True
    ) -> tuple[Any, Any, Any, Any]:
        rows = len(x.shape) - 1
        if x.shape[-1] is not None and x.shape[-1] < SHORT_ROWS:
            # short rows: every statistic off TensorFlow's fused log_softmax, the fewest ops.
            # It forms (x - m) - lse_rel, so at each row's maximum it is exactly -lse_rel
            # and nowhere more, and -log p at a label has the roundings of lse_rel + (m - x_y)
            log_p = tf.nn.log_softmax(x, axis=-1)
            sum_nll = nll_y = None
            if sum_w is not None:
                sum_nll = -(tf.reduce_sum(log_p, axis=-1) if weight is None else tf.linalg.matvec(log_p, weight))
            if labels is not None:
                nll_y = -tf.gather(log_p, labels, axis=-1, batch_dims=rows)
            if not stats:  # (softmax_affine's row-wise softmax reads neither)
                return None, None, sum_nll, nll_y
            return tf.reduce_max(x, axis=-1), -tf.reduce_max(log_p, axis=-1), sum_nll, nll_y
        # long rows: the sums over z = x - m first, then TensorFlow's fused softmax (oneDNN on
        # x86 CPUs, cuDNN on GPUs: measured, 2 threads, 1024×32000, 2.5 times as fast as its
        # log_softmax), whose largest entry, at each row's maximum, is exactly
        # 1 / Σ exp(z): lse_rel is minus its log. The control dependency orders the two,
        # so z is freed before the softmax is made: one B×K temporary at a time.
        m, sum_z = self.shifted_sums(x, weight, sum_w is not None)
        with tf.control_dependencies([] if sum_z is None else [sum_z]):
            lse_rel = -tf.math.log(tf.reduce_max(tf.nn.softmax(x, axis=-1), axis=-1))
        sum_nll = None if sum_z is None else lse_rel * sum_w - sum_z
        nll_y = None
        if labels is not None:
            nll_y = shifted_nll(m, lse_rel, tf.gather(x, labels, axis=-1, batch_dims=rows))
        return m, lse_rel, sum_nll, nll_y

    def shifted_sums(self, x: Any, weight: Any, summed: bool) -> tuple[Any, Any]:
        """``(m, Σ_c w_c (x_c - m))`` over the last axis, m the row maximum (the sum None
        unless ``summed``; w = 1 without a weight)."""
        return _shifted_sums(x, weight, summed)

    def softmax_affine(self, x: Any, stats: Any, scale: Any, shift: Any, *, row_lse: bool = True) -> Any:
        if not row_lse:
            return super().softmax_affine(x, stats, scale, shift, row_lse=False)
        return _affine(tf.nn.softmax(x, axis=-1), scale, shift)

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        K = g.shape[-1]
        if K is None or K >= SHORT_ROWS:
            return _scatter_at_labels(g, labels, values)
        # short rows: a one-hot of the labels holding the values, added (two ops, where the
        # scatter's indices and updates take seven)
        if not tf.is_tensor(values):
            return g + tf.one_hot(labels, K, on_value=tf.constant(values, g.dtype), off_value=tf.zeros((), g.dtype))
        values = values if values.dtype == g.dtype else tf.cast(values, g.dtype)
        return g + tf.one_hot(labels, K, dtype=g.dtype) * tf.expand_dims(values, -1)


def _scatter_at_labels(g: Any, labels: Any, values: Any) -> Any:
    """``add_at_labels`` as one scatter of a value per row into g (as flat rows)."""
    shape = tf.shape(g)
    flat_labels = tf.reshape(labels, (-1,))
    rows = tf.range(tf.shape(flat_labels)[0], dtype=flat_labels.dtype)
    values = tf.cast(values, g.dtype) if tf.is_tensor(values) else tf.constant(values, g.dtype)
    updates = tf.reshape(tf.broadcast_to(values, tf.shape(labels)), (-1,))
    flat = tf.tensor_scatter_nd_add(
        tf.reshape(g, (-1, shape[-1])), tf.stack([rows, flat_labels], axis=1), updates
    )
    return tf.reshape(flat, shape)


def _shifted_sums(x: Any, weight: Any, summed: bool) -> tuple[Any, Any]:
    m = tf.reduce_max(x, axis=-1)
    if not summed:
        return m, None
    z = x - tf.expand_dims(m, -1)  # <= 0: the sum adds terms of one sign, with no cancellation
    return m, tf.reduce_sum(z, axis=-1) if weight is None else tf.linalg.matvec(z, weight)


class TensorflowFramework(Framework):
    name = "tensorflow"
    native_kernel_class = TensorflowKernels

    def is_concrete(self, x: Any) -> bool:
        return bool(tf.executing_eagerly())

    def is_graph(self, x: Any) -> bool:
        return not tf.executing_eagerly()

    def device(self, x: Any) -> Any:
        return x.device

    def dynamic_shape(self, x: Any) -> Any:
        shape = tuple(x.shape)
        return tf.shape(x) if None in shape else shape

    def cross_entropy(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        fw = self
        floating = targets.dtype.is_floating
        kernels = self.fused(logits, _numel(logits))  # XLA-compiled where it pays

        # the logits' gradient alone, from these kernels: the forward makes no statistic
        # that the backward would not read (fewer ops in a graph of small calls)
        lean = kernels is self and weight is None and not floating

        @tf.custom_gradient
        def loss_fn(logits: Any, targets: Any, *maybe_weight: Any) -> Any:
            w = maybe_weight[0] if maybe_weight else None
            if lean:
                loss, stats, scale = _core.forward(fw, logits, targets, w, opts, stats=False)
            else:
                loss, stats, scale = kernels.closed_forward(logits, targets, w, opts)

            def grad(cotangent: Any) -> Any:
                needs = (True, floating, w is not None)
                if tf.executing_eagerly() and _recording():  # a tape watches the backward
                    with native_kernels(False):
                        l2, stats2, scale2 = _core.forward(fw, logits, targets, w, opts)
                        g = _core.backward(fw, logits, targets, w, opts, stats2, scale2, l2, cotangent, needs)
                else:
                    g = kernels.closed_backward(logits, targets, w, opts, stats, scale, loss, cotangent, needs)
                return (g[0], g[1]) + ((g[2],) if w is not None else ())

            return loss, grad

        return loss_fn(logits, targets) if weight is None else loss_fn(logits, targets, weight)

    def fused(self, like: Any, numel: Any) -> Any:
        return _XLA if _xla_wanted(numel) else self

    def linear_cross_entropy(self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int) -> Any:
        fw = self.fused(hidden, chunk * int(weight.shape[0]))  # each chunk's closed form, XLA-compiled where it pays
        needs = (True, True, True) if _recording() else (False, False, False)

        @tf.custom_gradient
        def loss_fn(hidden: Any, weight: Any, *maybe_bias: Any) -> Any:
            b = maybe_bias[0] if maybe_bias else None
            loss, stats, scale, grads = _linear.chunked_forward(fw, hidden, weight, b, labels, opts, chunk, needs)

            def grad(cotangent: Any) -> Any:
                if grads is not None:
                    d = tuple(None if g is None else g * tf.cast(cotangent, g.dtype) for g in grads)
                else:
                    d = _linear.chunked_backward(fw, hidden, weight, b, labels, opts, chunk, stats, scale, cotangent)
                return d[:2] + ((d[2],) if b is not None else ())

            return loss, grad

        return loss_fn(hidden, weight) if bias is None else loss_fn(hidden, weight, bias)

    def chunk_loop(self, *args: Any) -> Any:
        if tf.executing_eagerly():
            return _linear.python_loop(self, *args)
        return _while_loop(self, *args)


FW = TensorflowFramework(tensorflow_namespace)


def binding() -> TensorflowFramework:
    return FW


# ---------------------------------------------------------------------- compiled kernels
# Calls on at least this many logits run the XLA-compiled kernels under
# set_compile_mode("auto"). Measured forward+backward in a tf.function, float32, 2 CPU
# threads (XLA ÷ TensorFlow's own kernels): 1.13 at 256×1000, 1.03 at 1024×1000, 0.87 at
# 4096×1000; above that XLA also keeps no logits-sized temporary besides the gradient.
COMPILE_THRESHOLD = int(os.environ.get("SMOOTHLOSS_COMPILE_THRESHOLD", 1 << 21))


class _GraphKernels(Kernels):
    """The Array-API composition that XLA fuses, but for the label term of the gradient:
    a scatter (TensorFlow's own kernel's) instead of a compare and select at every logit,
    which took XLA:CPU's backward loop about twice as long (measured, 2 threads,
    4096×1000: 4.3 against 2.2 ms)."""

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


# Logits from which the forward's row sums run as one XLA kernel; below, TensorFlow's
# own three ops are faster. Measured, 2 threads, max and Σ(x - m) per row, XLA against
# TensorFlow: 2.5 against 2.0 ms at 4096×1000 and 2.3 against 1.7 at 256×16000 (4M
# logits), even at 8192×1000, 5.5 against 8.0 ms at 512×32000 and 14 against 18 at
# 1024×32000.
XLA_SUMS_FROM = 1 << 23


class _CompiledKernels(TensorflowKernels):
    """The native kernels with the row sums of the forward compiled by XLA (for large
    logits, or of a size unknown while tracing)."""

    def shifted_sums(self, x: Any, weight: Any, summed: bool) -> tuple[Any, Any]:
        numel = _numel(x)
        if not summed or (numel is not None and numel < XLA_SUMS_FROM):
            return _shifted_sums(x, weight, summed)  # TensorFlow's own ops (the maximum alone: one)
        return self.fw._run("sums", x, weight, True)


class _Compiled(TensorflowFramework):
    """The binding whose closed-form backward, and the forward's sums over x - m, are
    ``tf.function``\\ s with ``jit_compile=True``: XLA fuses the backward into one loop
    that reads the logits and writes the gradient, with no other B×K temporary, and the
    forward's row maximum and sums over x - m into one kernel (three TensorFlow ops
    otherwise, which are faster below ``XLA_SUMS_FROM`` logits). Each is traced once
    per dtype and option set (``reduce_retracing``: a new batch size does not
    retrace), compiled by XLA per shape; inside a caller's graph it is a nested XLA
    cluster. The forward's softmax is TensorFlow's own (see
    :meth:`TensorflowKernels.log_softmax_stats`): XLA:CPU materialises the operand of
    each row reduction, so a compiled log-sum-exp would hold x - m and exp(x - m) at
    once. An eager compile that fails warns once per process; the eager kernels run
    from then on."""

    compiled = True
    native_kernel_class = _CompiledKernels

    def __init__(self) -> None:
        super().__init__(tensorflow_namespace)
        self.broken: str | None = None
        self.calls = {"sums": 0, "backward": 0}  # eager compiled calls made (the tests read them)
        self._kernels = {
            "sums": (tf.function(_shifted_sums, jit_compile=True, autograph=False, reduce_retracing=True),
                     _shifted_sums),
            "backward": (tf.function(_xla_backward, jit_compile=True, autograph=False, reduce_retracing=True),
                         FW.closed_backward),
        }

    def _run(self, name: str, *args: Any) -> Any:
        """The compiled kernel ``name`` of ``args``; its eager version where compiling failed."""
        compiled, eager = self._kernels[name]
        if not tf.executing_eagerly():  # in a graph: nothing runs (or can fail) until the graph runs
            return compiled(*args)
        if self.broken is None:
            try:
                out = compiled(*args)
                self.calls[name] += 1
                return out
            except tf.errors.ResourceExhaustedError:
                raise  # out of memory: not a compiler failure, and eager kernels need no less
            except Exception as e:  # noqa: BLE001 (whatever XLA raised: fall back, once)
                self.broken = compile_failed("XLA", e)
        return eager(*args)

    def closed_backward(self, logits: Any, targets: Any, weight: Any, opts: _core.Options, stats: Any, scale: Any,
                        loss: Any, cotangent: Any, needs: tuple[bool, bool, bool] = (True, False, False)) -> Any:
        # Python floats (the chunked loss's scale and cotangent) as tensors: a function
        # traces again for every new Python value it is given
        scale, cotangent = (tf.constant(v, stats.dtype) if isinstance(v, float) else v for v in (scale, cotangent))
        return self._run("backward", logits, targets, weight, opts, stats, scale, loss, cotangent, needs)

    def fused(self, like: Any, numel: Any) -> Any:
        return self


def _xla_backward(logits: Any, targets: Any, weight: Any, opts: _core.Options, *rest: Any) -> Any:
    return _core.backward(_REFERENCE, logits, targets, weight, opts, *rest)


_XLA = _Compiled()


def _xla_wanted(numel: int | None) -> bool:
    """Whether a call on ``numel`` logits runs the XLA kernels: by the compile mode and the
    number of logits where it is known (None, an unknown dimension in a graph, counts as
    below the threshold: under "auto" such calls are left to the caller's own compiler)."""
    return _XLA.broken is None and compile_wanted(numel, COMPILE_THRESHOLD)


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


def _while_loop(
    fw: Any, step: Any, hidden: Any, weight: Any, bias: Any, labels: Any, row_opts: Any, chunk: int,
    stats: Any, scale: Any, cotangent: Any, needs: tuple[bool, bool, bool],
) -> tuple[Any, Any, Any, Any, Any]:
    """The chunk loop inside a TensorFlow graph: a ``tf.while_loop`` calling the same
    ``step``, per-row results in TensorArrays, the weight and bias gradients as
    loop-carried sums.

    A Python loop unrolled into the graph lets TensorFlow's executor run the chunks side
    by side and hold their logits at once (measured: 0.73× the unchunked path's peak
    memory instead of about 0.2); the while loop runs one chunk at a time
    (``parallel_iterations=1``). With a static row count the loop takes the full chunks
    with fixed-size slices (so ``jit_compile=True`` works) and the shorter last chunk
    follows it; with a row count known only at run time (Keras's retrace after a
    partial batch) every chunk is a ``[i, min(i + chunk, N))`` slice.
    """
    static = hidden.shape[0] is not None
    n = int(hidden.shape[0]) if static else tf.shape(hidden)[0]
    count = n // chunk if static else (n + chunk - 1) // chunk
    acc = compute_dtype(fw.xp, hidden.dtype)
    forward = stats is None
    per_row = getattr(cotangent, "ndim", 0) > 0

    def rows(a: Any, i: Any) -> Any:
        if a is None:
            return None
        if static:  # a fixed-size slice
            return tf.slice(a, [i] + [0] * (a.shape.rank - 1), [chunk] + a.shape[1:].as_list())
        return a[i:tf.minimum(i + chunk, n)]

    def call(i: Any, d_weight: Any, d_bias: Any, take: Any) -> Any:
        return step(
            fw, take(hidden, i), take(labels, i), weight, bias, row_opts, None if forward else take(stats, i), scale,
            take(cotangent, i) if per_row else cotangent, needs, d_weight, d_bias,
        )

    def array(dtype: Any, shape: list[Any]) -> Any:
        return tf.TensorArray(dtype, size=count, infer_shape=False, element_shape=tf.TensorShape(shape))

    placeholder = tf.zeros((), acc)  # loop variables for the sums nobody asked for
    start = (
        tf.constant(0), array(acc, [None]), array(acc, [None, 2]), array(hidden.dtype, [None, hidden.shape[-1]]),
        tf.zeros(weight.shape, acc) if needs[1] else placeholder,
        tf.zeros(weight.shape[:1], acc) if needs[2] else placeholder,
    )

    def body(k: Any, losses: Any, stats_parts: Any, dhs: Any, d_weight: Any, d_bias: Any) -> Any:
        loss_c, stats_c, dh_c, d_w, d_b = call(
            k * chunk, d_weight if needs[1] else None, d_bias if needs[2] else None, rows
        )
        if forward:
            losses, stats_parts = losses.write(k, loss_c), stats_parts.write(k, stats_c)
        if needs[0]:
            dhs = dhs.write(k, dh_c)
        return (k + 1, losses, stats_parts, dhs, d_w if needs[1] else d_weight, d_b if needs[2] else d_bias)

    # parallel_iterations=1: by default up to 10 iterations, each with its chunk's logits, overlap
    _, losses, stats_parts, dhs, d_weight, d_bias = tf.while_loop(
        lambda k, *_: k < count, body, start, parallel_iterations=1
    )
    parts = [[losses.concat()] if forward else [], [stats_parts.concat()] if forward else [], [dhs.concat()] if needs[0] else []]
    d_weight, d_bias = (d_weight if needs[1] else None), (d_bias if needs[2] else None)
    if static and n % chunk:  # the shorter last chunk
        loss_c, stats_c, dh_c, d_weight, d_bias = call(count * chunk, d_weight, d_bias, lambda a, i: a[i:])
        for part, value, wanted in zip(parts, (loss_c, stats_c, dh_c), (forward, forward, needs[0])):
            if wanted:
                part.append(value)

    def joined(part: list[Any]) -> Any:
        return part[0] if len(part) == 1 else tf.concat(part, axis=0)

    return (
        joined(parts[0]) if forward else None,
        joined(parts[1]) if forward else stats,
        joined(parts[2]) if needs[0] else None,
        d_weight,
        d_bias,
    )
