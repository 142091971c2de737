"""The TensorFlow binding's facts and kernels: the declared namespace shim, graph-aware
value checks, the native kernels, and the chunked loss's loop inside a graph (a
``tf.while_loop``).

A leaf: it imports no part of the algorithm. The XLA-compiled kernels are
:mod:`smoothloss.backends.tensorflow_compiled`; the ``tf.custom_gradient``
registrations and the choice of path are :mod:`smoothloss.backends.tensorflow_autodiff`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from smoothloss._formulas import compute_dtype, shifted_nll
from smoothloss.backends import tensorflow_namespace
from smoothloss.backends._base import Framework, Kernels, _affine

__all__ = ["FW", "SHORT_ROWS", "TensorflowFramework", "TensorflowKernels", "binding", "while_loop"]


# Rows shorter than this take every forward statistic off one fused log_softmax (fewer
# ops); longer rows take the sums over x - m and the fused softmax (fewer passes at the
# speed of TensorFlow's softmax). The path table in docs/transforms.md gives the ratios.
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
        # x86 CPUs, cuDNN on GPUs: faster than its log_softmax), whose largest entry, at
        # each row's maximum, is exactly
        # 1 / Σ exp(z): lse_rel is minus its log. The control dependency orders the two,
        # so z is freed before the softmax is made: one B×K temporary at a time.
        m, sum_z = _shifted_sums(x, weight, sum_w is not None)
        with tf.control_dependencies([] if sum_z is None else [sum_z]):
            lse_rel = -tf.math.log(tf.reduce_max(tf.nn.softmax(x, axis=-1), axis=-1))
        sum_nll = None if sum_z is None else lse_rel * sum_w - sum_z
        nll_y = None
        if labels is not None:
            nll_y = shifted_nll(m, lse_rel, tf.gather(x, labels, axis=-1, batch_dims=rows))
        return m, lse_rel, sum_nll, nll_y

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

    def checks_at_run_time(self, x: Any) -> bool:
        return not tf.executing_eagerly()

    def check(self, ok: Any, message: str, lo: Any, hi: Any) -> None:
        # A graph assertion (tf.function runs it with the step, as it runs every op with
        # a side effect), failing with an InvalidArgumentError that prints lo and hi, as
        # Keras's own sparse loss raises in model.fit. XLA (jit_compile=True) compiles
        # assertions to nothing: there, as with Keras's own loss, the loss is NaN.
        tf.debugging.Assert(tf.reduce_all(ok), [message + "; found out-of-range values, e.g.", lo, hi], name="smoothloss_check")

    def detached(self, value: Any) -> Any:
        return tf.stop_gradient(tf.convert_to_tensor(value))  # (a tf.Variable: its value now)

    def read_scalar(self, value: Any) -> float | None:
        return float(tf.convert_to_tensor(value)) if tf.executing_eagerly() else None

    def device(self, x: Any) -> Any:
        return x.device

    def dynamic_shape(self, x: Any) -> Any:
        shape = tuple(x.shape)
        return tf.shape(x) if None in shape else shape


FW = TensorflowFramework(tensorflow_namespace)


def binding() -> TensorflowFramework:
    return FW


def while_loop(
    run: Any, step: Any, hidden: Any, weight: Any, bias: Any, labels: Any, row_opts: Any, chunk: int,
    stats: Any, scale: Any, cotangent: Any, needs: tuple[bool, bool, bool],
) -> tuple[Any, Any, Any, Any, Any]:
    """The chunk loop inside a TensorFlow graph: a ``tf.while_loop`` calling the same
    ``step``, per-row results in TensorArrays, the weight and bias gradients as
    loop-carried sums.

    A Python loop unrolled into the graph lets TensorFlow's executor run the chunks side
    by side and hold their logits at once (most of the unchunked path's peak memory);
    the while loop runs one chunk at a time
    (``parallel_iterations=1``). With a static row count the loop takes the full chunks
    with fixed-size slices (so ``jit_compile=True`` works) and the shorter last chunk
    follows it; with a row count known only at run time (Keras's retrace after a
    partial batch) every chunk is a ``[i, min(i + chunk, N))`` slice.
    """
    static = hidden.shape[0] is not None
    n = int(hidden.shape[0]) if static else tf.shape(hidden)[0]
    count = n // chunk if static else (n + chunk - 1) // chunk
    acc = compute_dtype(run.fw.xp, hidden.dtype)
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
            run, take(hidden, i), take(labels, i), weight, bias, row_opts, None if forward else take(stats, i), scale,
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
