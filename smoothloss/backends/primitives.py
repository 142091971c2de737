"""The kernels the core's hot path is made of, with native versions per framework.

Each function has an Array-API composition (the reference) and, where it pays, a
framework-native version: PyTorch gets fused/in-place kernels (fewer B×K passes and
allocations), TensorFlow gets ``tf.reduce_logsumexp``, ``tf.nn.softmax`` and
``tf.tensor_scatter_nd_add``; JAX uses
the composition, which XLA fuses anyway. ``native_kernels(False)`` switches the natives off, so the test suite
can check them against the composition.

* ``logsumexp(xp, x)``: log Σ_c exp(x_c) over the last axis.
* ``softmax_affine(xp, x, lse, scale, shift, *, row_lse=True)``: scale·exp(x - lse) - shift,
  where ``lse`` is per position (the row's own unless ``row_lse=False``), ``scale`` per position (…, 1) or a float, ``shift`` anything
  that broadcasts against x.
* ``add_at_labels(xp, g, labels, values)``: g with ``values`` (per position) added at
  each position's label. The natives may write into ``g`` (it is always a fresh array).
* ``add_matmul(xp, acc, a, b)``: ``acc + a @ b`` in ``acc``'s dtype (``a @ b`` when
  ``acc`` is None); torch adds into ``acc`` in place (``addmm_``), so accumulating a
  V×H gradient over chunks never allocates a second V×H array.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import array_api_compat

from smoothloss.backends import device

__all__ = ["logsumexp", "softmax_affine", "add_at_labels", "add_matmul", "native_kernels"]

_ENABLED = [True]


@contextlib.contextmanager
def native_kernels(enabled: bool) -> Iterator[None]:
    """Use (or not) the framework-native kernels inside the block."""
    old = _ENABLED[0]
    _ENABLED[0] = enabled
    try:
        yield
    finally:
        _ENABLED[0] = old


def _kind(xp: Any) -> str | None:
    if not _ENABLED[0]:
        return None
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    if getattr(xp, "__name__", "") == "smoothloss.backends.tensorflow_namespace":
        return "tensorflow"
    return None


def logsumexp(xp: Any, x: Any) -> Any:
    kind = _kind(xp)
    if kind == "torch":
        import torch

        # torch's fused log_softmax kernel is several times faster on the CPU than
        # torch.logsumexp; read the log-sum-exp off it at each row's maximum, where
        # log p = max - lse is computed without cancellation.
        m, at = torch.max(x, dim=-1, keepdim=True)
        return (m - torch.log_softmax(x, dim=-1).gather(-1, at)).squeeze(-1)
    if kind == "tensorflow":
        import tensorflow as tf

        return tf.reduce_logsumexp(x, axis=-1)
    m = xp.max(x, axis=-1, keepdims=True)
    return m[..., 0] + xp.log(xp.sum(xp.exp(x - m), axis=-1))


def softmax_affine(xp: Any, x: Any, lse: Any, scale: Any, shift: Any, *, row_lse: bool = True) -> Any:
    # The native softmax kernels normalise over x's own last axis; they stand in for
    # exp(x - lse) only when lse is that row's log-sum-exp (row_lse=True). A shard of
    # the classes (vocab parallelism) passes its global lse with row_lse=False.
    kind = _kind(xp) if row_lse else None
    if kind == "torch":
        import torch

        g = torch.softmax(x, dim=-1)  # = exp(x - lse), by torch's fused kernel
        g = g.mul_(scale) if not isinstance(scale, float) or scale != 1.0 else g
        return g.sub_(shift) if not isinstance(shift, float) or shift != 0.0 else g
    if kind == "tensorflow":
        import tensorflow as tf

        g = tf.nn.softmax(x, axis=-1)
    else:
        g = xp.exp(x - xp.expand_dims(lse, axis=-1))
    if not isinstance(scale, float) or scale != 1.0:
        g = g * scale
    if not isinstance(shift, float) or shift != 0.0:
        g = g - shift
    return g


def add_at_labels(xp: Any, g: Any, labels: Any, values: Any) -> Any:
    kind = _kind(xp)
    if kind == "torch":
        import torch

        v = values if isinstance(values, torch.Tensor) else torch.full_like(labels, values, dtype=g.dtype)
        v = v.expand(labels.shape) if v.shape != labels.shape else v
        return g.scatter_add_(-1, labels.unsqueeze(-1), v.to(g.dtype).unsqueeze(-1))
    if kind == "tensorflow":
        import tensorflow as tf

        shape = tf.shape(g)
        flat_labels = tf.reshape(labels, (-1,))
        rows = tf.range(tf.shape(flat_labels)[0], dtype=flat_labels.dtype)
        values = tf.cast(values, g.dtype) if tf.is_tensor(values) else tf.constant(values, g.dtype)
        updates = tf.reshape(tf.broadcast_to(values, tf.shape(labels)), (-1,))
        flat = tf.tensor_scatter_nd_add(
            tf.reshape(g, (-1, shape[-1])), tf.stack([rows, flat_labels], axis=1), updates
        )
        return tf.reshape(flat, shape)
    classes = xp.arange(g.shape[-1], dtype=labels.dtype, device=device(labels))
    hit = xp.expand_dims(labels, axis=-1) == classes
    v = xp.expand_dims(values, axis=-1) if not isinstance(values, float) and values.ndim else values
    return xp.where(hit, g + v, g)


def add_matmul(xp: Any, acc: Any, a: Any, b: Any) -> Any:
    if acc is None:
        return xp.matmul(a, b)
    if _kind(xp) == "torch" and a.dtype == acc.dtype == b.dtype:
        return acc.addmm_(a, b)
    ab = xp.matmul(a, b)
    return acc + (ab if ab.dtype == acc.dtype else xp.astype(ab, acc.dtype))
