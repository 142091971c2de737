"""The chunked linear cross-entropy's closed-form gradient as a ``jax.custom_vjp``.

For ``"mean"``/``"sum"`` the forward pass of ``jax.grad`` also makes the gradients at
cotangent 1 (one pass over the chunks) and the backward scales them; under jit, XLA
drops the ones nobody asks for. For ``"none"`` the residuals are the inputs and the
per-row log-sum-exp (O(N)) and the backward makes each chunk's logits again. The chunks
are a Python loop, unrolled under jit.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from smoothloss._core import Options
from smoothloss._linear import chunked_backward, chunked_forward

_ALL = (True, True, True)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _linear_cross_entropy(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    return chunked_forward(hidden, weight, bias, labels, opts, chunk)[0]


def _fwd(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    loss, lse, scale, grads = chunked_forward(hidden, weight, bias, labels, opts, chunk, _ALL)
    if grads is not None:
        return loss, (grads, None)
    return loss, (None, (hidden, weight, bias, labels, lse, jnp.asarray(scale, dtype=lse.dtype)))


def _bwd(opts: Options, chunk: int, residuals: Any, cotangent: Any) -> Any:
    grads, inputs = residuals
    if grads is not None:
        return (*(None if g is None else g * cotangent.astype(g.dtype) for g in grads), None)
    hidden, weight, bias, labels, lse, scale = inputs
    return (*chunked_backward(hidden, weight, bias, labels, opts, chunk, lse, scale, cotangent), None)


_linear_cross_entropy.defvjp(_fwd, _bwd)


def linear_cross_entropy(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    return _linear_cross_entropy(hidden, weight, bias, labels, opts, chunk)
