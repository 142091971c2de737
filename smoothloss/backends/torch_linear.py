"""The chunked linear cross-entropy's closed-form gradient as a ``torch.autograd.Function``."""

from __future__ import annotations

from typing import Any

import torch

from smoothloss._core import Options
from smoothloss._linear import chunked_backward, chunked_forward


class LinearCrossEntropyFunction(torch.autograd.Function):
    """For ``"mean"``/``"sum"`` the forward also makes the gradients at cotangent 1 (one
    pass over the chunks instead of two) and the backward scales them in place. The
    saved tensors are the inputs and the per-row log-sum-exp (O(N)); a second backward
    of the same graph (``retain_graph=True``), and ``"none"``, make each chunk's logits
    again. No N×V tensor is kept."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
        needs = tuple(ctx.needs_input_grad[:3])
        loss, lse, scale, grads = chunked_forward(hidden, weight, bias, labels, opts, chunk, needs)
        ctx.opts, ctx.chunk, ctx.scale = opts, chunk, scale
        # not saved tensors: the first backward scales them in place and drops them
        ctx.grads = grads
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            hidden, weight, bias, labels, lse = ctx.saved_tensors
            needs = tuple(ctx.needs_input_grad[:3])
            grads = chunked_backward(hidden, weight, bias, labels, ctx.opts, ctx.chunk, lse, ctx.scale, cotangent, needs)
        else:
            grads = tuple(None if g is None else g.mul_(cotangent) for g in grads)
        return (*grads, None, None, None)


def linear_cross_entropy(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    wants_grad = torch.is_grad_enabled() and any(
        a is not None and a.requires_grad for a in (hidden, weight, bias)
    )
    if not wants_grad:  # inference: the forward alone
        return chunked_forward(hidden, weight, bias, labels, opts, chunk)[0]
    return LinearCrossEntropyFunction.apply(hidden, weight, bias, labels, opts, chunk)
