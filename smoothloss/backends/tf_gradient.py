"""The core's closed-form gradient registered with ``tf.custom_gradient``."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from smoothloss._core import Options, backward, forward


def cross_entropy(logits: Any, targets: Any, weight: Any, opts: Options) -> Any:
    floating_targets = targets.dtype.is_floating

    @tf.custom_gradient
    def _loss(logits: Any, targets: Any, *maybe_weight: Any) -> Any:
        w = maybe_weight[0] if maybe_weight else None
        loss, lse, scale = forward(logits, targets, w, opts)

        def grad(cotangent: Any) -> Any:
            g_logits, g_targets, g_weight = backward(
                logits, targets, w, opts, lse, scale, loss, cotangent,
                (True, floating_targets, w is not None),
            )
            return (g_logits, g_targets) + ((g_weight,) if w is not None else ())

        return loss, grad

    return _loss(logits, targets) if weight is None else _loss(logits, targets, weight)
