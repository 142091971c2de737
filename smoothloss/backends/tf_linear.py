"""The chunked linear cross-entropy's closed-form gradient with ``tf.custom_gradient``.

The gradient function closes over the inputs and the per-row log-sum-exp (O(N)) and
makes each chunk's logits again.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from smoothloss._core import Options
from smoothloss._linear import chunked_backward, chunked_forward


def linear_cross_entropy(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    @tf.custom_gradient
    def _loss(hidden: Any, weight: Any, *maybe_bias: Any) -> Any:
        b = maybe_bias[0] if maybe_bias else None
        loss, lse, scale = chunked_forward(hidden, weight, b, labels, opts, chunk)

        def grad(cotangent: Any) -> Any:
            d_hidden, d_weight, d_bias = chunked_backward(
                hidden, weight, b, labels, opts, chunk, lse, scale, cotangent
            )
            return (d_hidden, d_weight) + ((d_bias,) if b is not None else ())

        return loss, grad

    return _loss(hidden, weight) if bias is None else _loss(hidden, weight, bias)
