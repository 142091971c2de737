"""The core's closed-form gradient registered as a ``torch.autograd.Function``."""

from __future__ import annotations

from typing import Any

import torch

from smoothloss._core import Options, backward, forward


class CrossEntropyFunction(torch.autograd.Function):
    """Forward saves the inputs and the per-position log-sum-exp (O(B)); backward
    recomputes softmax in one pass and applies the closed form."""

    @staticmethod
    def forward(ctx: Any, logits: Any, targets: Any, weight: Any, opts: Options) -> Any:
        loss, lse, scale = forward(logits, targets, weight, opts)
        ctx.opts = opts
        ctx.scale = scale
        ctx.save_for_backward(logits, targets, weight, lse, loss)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        logits, targets, weight, lse, loss = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        g_logits, g_targets, g_weight = backward(
            logits, targets, weight, ctx.opts, lse, ctx.scale, loss, cotangent, needs
        )
        return g_logits, g_targets, g_weight, None


def cross_entropy(logits: Any, targets: Any, weight: Any, opts: Options) -> Any:
    wants_grad = torch.is_grad_enabled() and (
        logits.requires_grad or targets.requires_grad or (weight is not None and weight.requires_grad)
    )
    if not wants_grad:  # inference: the forward alone
        return forward(logits, targets, weight, opts)[0]
    return CrossEntropyFunction.apply(logits, targets, weight, opts)
