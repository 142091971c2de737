"""The vocab-parallel loss inside ``jax.shard_map``, with its closed-form ``jax.custom_vjp``.

The collectives are ``jax.lax.pmax`` / ``jax.lax.psum`` over the mesh axis that shards
the classes; the forward runs them (two in all), the backward none: it rebuilds this
shard's gradient slice from the local logits and the saved global log-sum-exp.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Hashable

import jax
import jax.numpy as jnp

from smoothloss._vocab_parallel import VocabParallelOptions, vocab_parallel_backward, vocab_parallel_forward

__all__ = ["vocab_parallel_cross_entropy"]


def _offset(local_logits: Any, axis_name: Hashable) -> Any:
    return jax.lax.axis_index(axis_name) * local_logits.shape[-1]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _loss(local_logits: Any, labels: Any, axis_name: Hashable, opts: VocabParallelOptions) -> Any:
    return _fwd(local_logits, labels, axis_name, opts)[0]


def _fwd(local_logits: Any, labels: Any, axis_name: Hashable, opts: VocabParallelOptions) -> Any:
    offset = _offset(local_logits, axis_name)
    loss, lse, scale = vocab_parallel_forward(
        local_logits, labels, offset, opts,
        lambda a: jax.lax.pmax(a, axis_name), lambda a: jax.lax.psum(a, axis_name),
    )
    return loss, (local_logits, labels, lse, jnp.asarray(scale, dtype=lse.dtype))


def _bwd(axis_name: Hashable, opts: VocabParallelOptions, residuals: Any, cotangent: Any) -> Any:
    local_logits, labels, lse, scale = residuals
    offset = _offset(local_logits, axis_name)
    g = vocab_parallel_backward(local_logits, labels, offset, opts, lse, scale, cotangent)
    return g, None


_loss.defvjp(_fwd, _bwd)


def vocab_parallel_cross_entropy(
    local_logits: Any, labels: Any, axis_name: Hashable, opts: VocabParallelOptions
) -> Any:
    """The loss of this shard's call (identical on every shard), differentiable."""
    return _loss(local_logits, labels, axis_name, opts)
