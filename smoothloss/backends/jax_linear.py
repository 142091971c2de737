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


def sweep_scan(
    step: Any, hidden: Any, weight: Any, bias: Any, labels: Any, row_opts: Options, chunk: int,
    lse: Any, scale: Any, cotangent: Any, needs: tuple[bool, bool, bool],
) -> tuple[Any, Any, Any, Any, Any]:
    """``_linear._sweep``'s loop as a ``jax.lax.scan`` over the full chunks, then the
    shorter last chunk directly. A Python loop unrolled under jit leaves XLA free to
    schedule every chunk's logits at once (it did: more memory than the unchunked path);
    a scan runs one chunk at a time, with the weight and bias gradients as its carry,
    and compiles one chunk instead of N/chunk."""
    from smoothloss._core import compute_dtype
    from smoothloss.backends import array_namespace

    xp = array_namespace(hidden, weight, bias)
    acc = compute_dtype(xp, hidden.dtype)
    n = int(hidden.shape[0])
    full, rest = divmod(n, chunk)
    per_row = getattr(cotangent, "ndim", 0) > 0
    forward = lse is None

    def blocks(a: Any) -> Any:  # the first full·chunk rows as (full, chunk, ...)
        return None if a is None else a[: full * chunk].reshape(full, chunk, *a.shape[1:])

    def body(carry: Any, xs: Any) -> Any:
        h, y, lse_c, cot = xs
        loss_c, lse_c, dh_c, d_w, d_b = step(
            xp, h, y, weight, bias, row_opts, lse_c, scale, cot if per_row else cotangent, needs, *carry
        )
        return (d_w, d_b), (loss_c, lse_c, dh_c)

    carry: Any = (None, None)
    outs: list[Any] = []
    if full:
        carry = (
            jnp.zeros(weight.shape, acc) if needs[1] else None,
            jnp.zeros(weight.shape[:1], acc) if needs[2] else None,
        )
        xs = (blocks(hidden), blocks(labels), None if forward else blocks(lse), blocks(cotangent) if per_row else None)
        carry, stacked = jax.lax.scan(body, carry, xs)
        outs.append(tuple(None if a is None else a.reshape(full * chunk, *a.shape[2:]) for a in stacked))
    if rest or not full:
        tail = slice(full * chunk, n)
        carry, last = body(carry, (
            hidden[tail], labels[tail], None if forward else lse[tail], cotangent[tail] if per_row else None,
        ))
        outs.append(last)

    def joined(k: int) -> Any:
        parts = [o[k] for o in outs]
        return None if parts[0] is None else (parts[0] if len(parts) == 1 else jnp.concatenate(parts))

    return (
        joined(0) if forward else None,
        joined(1) if forward else lse,
        joined(2) if needs[0] else None,
        *carry,
    )
