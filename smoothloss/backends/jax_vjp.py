"""The core's closed-form gradient registered as a ``jax.custom_vjp``.

Gradients for probability targets and class weights are computed in the backward only
where requested: under jit, XLA drops the ones nobody uses.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from smoothloss._core import Options, backward, forward


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _cross_entropy(logits: Any, targets: Any, weight: Any, opts: Options) -> Any:
    return forward(logits, targets, weight, opts)[0]


def _fwd(logits: Any, targets: Any, weight: Any, opts: Options) -> Any:
    loss, lse, scale = forward(logits, targets, weight, opts)
    return loss, (logits, targets, weight, lse, jnp.asarray(scale, dtype=lse.dtype), loss)


def _bwd(opts: Options, residuals: Any, cotangent: Any) -> Any:
    logits, targets, weight, lse, scale, loss = residuals
    floating_targets = jnp.issubdtype(targets.dtype, jnp.floating)
    needs = (True, bool(floating_targets), weight is not None)
    g_logits, g_targets, g_weight = backward(
        logits, targets, weight, opts, lse, scale, loss, cotangent, needs
    )
    return g_logits, g_targets, g_weight


_cross_entropy.defvjp(_fwd, _bwd)


def cross_entropy(logits: Any, targets: Any, weight: Any, opts: Options) -> Any:
    return _cross_entropy(logits, targets, weight, opts)
