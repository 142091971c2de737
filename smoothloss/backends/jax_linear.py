"""The chunked linear cross-entropy's closed-form gradient as a ``jax.custom_vjp``.

The residuals are the inputs and the per-row log-sum-exp (O(N)); the backward makes
each chunk's logits again. The chunks are a Python loop, unrolled under jit.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from smoothloss._core import Options
from smoothloss._linear import chunked_backward, chunked_forward


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _linear_cross_entropy(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    return chunked_forward(hidden, weight, bias, labels, opts, chunk)[0]


def _fwd(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    loss, lse, scale = chunked_forward(hidden, weight, bias, labels, opts, chunk)
    return loss, (hidden, weight, bias, labels, lse, jnp.asarray(scale, dtype=lse.dtype))


def _bwd(opts: Options, chunk: int, residuals: Any, cotangent: Any) -> Any:
    hidden, weight, bias, labels, lse, scale = residuals
    d_hidden, d_weight, d_bias = chunked_backward(
        hidden, weight, bias, labels, opts, chunk, lse, scale, cotangent
    )
    return d_hidden, d_weight, d_bias, None


_linear_cross_entropy.defvjp(_fwd, _bwd)


def linear_cross_entropy(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    return _linear_cross_entropy(hidden, weight, bias, labels, opts, chunk)
