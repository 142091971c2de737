"""A small, declared Array-API namespace over TensorFlow.

array-api-compat does not cover TensorFlow, so smoothloss carries the few functions its
core uses, listed in ``__all__`` and nothing more. Each wraps the TensorFlow op of the
same meaning; where the standard accepts a Python scalar (``where``) the scalar takes
the other argument's dtype, as the standard's type promotion says. When
array-api-compat grows TensorFlow support, this module can be dropped.

Only imported once a ``tf.Tensor`` has been handed to smoothloss.
"""

from __future__ import annotations

import builtins
import contextlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    # constants
    "nan", "inf",
    # dtypes and their inspection
    "bool", "float16", "bfloat16", "float32", "float64", "int32", "int64",
    "isdtype", "finfo", "iinfo", "astype",
    # creation (on a given device)
    "asarray", "arange", "zeros_like", "ones_like",
    # element-wise
    "abs", "exp", "log", "log1p", "tanh", "where",
    # reductions
    "max", "min", "sum", "mean", "any",
    # shape and indexing
    "reshape", "expand_dims", "moveaxis", "take", "take_along_axis", "concat", "stack",
    # linear algebra
    "matmul",
]

nan = float("nan")
inf = float("inf")
bool = tf.bool  # noqa: A001 - the standard's dtype name
float16 = tf.float16
bfloat16 = tf.bfloat16
float32 = tf.float32
float64 = tf.float64
int32 = tf.int32
int64 = tf.int64

_KINDS = {
    "bool": lambda d: d == tf.bool,
    "real floating": lambda d: d.is_floating,
    "integral": lambda d: d.is_integer,
    "signed integer": lambda d: d.is_integer and not d.is_unsigned,
    "unsigned integer": lambda d: d.is_integer and d.is_unsigned,
    "complex floating": lambda d: d.is_complex,
    "numeric": lambda d: d.is_floating or d.is_integer or d.is_complex,
}


def isdtype(dtype: Any, kind: Any) -> builtins.bool:
    if isinstance(kind, tuple):
        return builtins.any(isdtype(dtype, k) for k in kind)
    if isinstance(kind, str):
        return builtins.bool(_KINDS[kind](tf.as_dtype(dtype)))
    return tf.as_dtype(dtype) == tf.as_dtype(kind)


def finfo(dtype: Any) -> Any:
    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    if tf.as_dtype(dtype) == tf.bfloat16:
        import ml_dtypes

        info = ml_dtypes.finfo(np_dtype)
    else:
        info = np.finfo(np_dtype)
    return SimpleNamespace(
        bits=int(info.bits), eps=float(info.eps), max=float(info.max), min=float(info.min),
        smallest_normal=float(info.smallest_normal), dtype=tf.as_dtype(dtype),
    )


def iinfo(dtype: Any) -> Any:
    info = np.iinfo(tf.as_dtype(dtype).as_numpy_dtype)
    return SimpleNamespace(bits=info.bits, min=int(info.min), max=int(info.max), dtype=dtype)


def zeros_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return tf.zeros_like(x, dtype=dtype)


def ones_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return tf.ones_like(x, dtype=dtype)


def astype(x: Any, dtype: Any, /, *, copy: builtins.bool = True) -> Any:
    return tf.cast(x, dtype)


def _on(device: Any) -> Any:
    return tf.device(device) if device is not None else contextlib.nullcontext()


def asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> Any:
    with _on(device):
        if isinstance(obj, (tf.Tensor, tf.Variable)):
            return obj if dtype is None else tf.cast(obj, dtype)
        return tf.convert_to_tensor(obj, dtype=dtype)


def arange(start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None) -> Any:
    with _on(device):
        if stop is None:
            return tf.range(start, dtype=dtype or tf.int64)
        return tf.range(start, stop, step, dtype=dtype or tf.int64)


abs = tf.math.abs  # noqa: A001 - the standard's name
exp = tf.math.exp
log = tf.math.log
log1p = tf.math.log1p
tanh = tf.math.tanh


def where(condition: Any, x1: Any, x2: Any, /) -> Any:
    if not isinstance(x1, (tf.Tensor, tf.Variable)):
        x1 = tf.convert_to_tensor(x1, dtype=x2.dtype)
    if not isinstance(x2, (tf.Tensor, tf.Variable)):
        x2 = tf.convert_to_tensor(x2, dtype=x1.dtype)
    return tf.where(condition, x1, x2)


def max(x: Any, /, *, axis: Any = None, keepdims: builtins.bool = False) -> Any:  # noqa: A001
    return tf.reduce_max(x, axis=axis, keepdims=keepdims)


def min(x: Any, /, *, axis: Any = None, keepdims: builtins.bool = False) -> Any:  # noqa: A001
    return tf.reduce_min(x, axis=axis, keepdims=keepdims)


def sum(x: Any, /, *, axis: Any = None, dtype: Any = None, keepdims: builtins.bool = False) -> Any:  # noqa: A001
    if dtype is not None:
        x = tf.cast(x, dtype)
    return tf.reduce_sum(x, axis=axis, keepdims=keepdims)


def mean(x: Any, /, *, axis: Any = None, keepdims: builtins.bool = False) -> Any:
    return tf.reduce_mean(x, axis=axis, keepdims=keepdims)


def any(x: Any, /, *, axis: Any = None, keepdims: builtins.bool = False) -> Any:  # noqa: A001
    return tf.reduce_any(tf.cast(x, tf.bool), axis=axis, keepdims=keepdims)


def reshape(x: Any, /, shape: Any, *, copy: Any = None) -> Any:
    return tf.reshape(x, shape)


def expand_dims(x: Any, /, *, axis: int = 0) -> Any:
    return tf.expand_dims(x, axis)


def moveaxis(x: Any, source: int, destination: int, /) -> Any:
    return tf.experimental.numpy.moveaxis(x, source, destination)


def take(x: Any, indices: Any, /, *, axis: Any = None) -> Any:
    if axis is None:  # the standard allows None for 1-D x only
        x, axis = tf.reshape(x, (-1,)), 0
    return tf.gather(x, indices, axis=axis)


def concat(arrays: Any, /, *, axis: int | None = 0) -> Any:
    if axis is None:
        return tf.concat([tf.reshape(a, (-1,)) for a in arrays], axis=0)
    return tf.concat(list(arrays), axis=axis)


def stack(arrays: Any, /, *, axis: int = 0) -> Any:
    return tf.stack(list(arrays), axis=axis)


def take_along_axis(x: Any, indices: Any, /, *, axis: int = -1) -> Any:
    return tf.experimental.numpy.take_along_axis(x, indices, axis=axis)


def matmul(x1: Any, x2: Any, /) -> Any:
    if x2.shape.rank == 1:
        if x1.shape.rank == 1:
            return tf.reduce_sum(x1 * x2)
        return tf.linalg.matvec(x1, x2)
    return tf.linalg.matmul(x1, x2)
