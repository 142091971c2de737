"""The vocab-parallel loss on ``torch.distributed``, as a ``torch.autograd.Function``.

The forward runs two all-reduces (MAX of the row maxima, SUM of the stacked sum-exp,
label logit and logit sum) and saves the global log-sum-exp (O(positions)); the backward
rebuilds this rank's gradient slice in closed form with no collective.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from smoothloss._vocab_parallel import VocabParallelOptions, vocab_parallel_backward, vocab_parallel_forward

__all__ = ["VocabParallelCrossEntropyFunction", "vocab_parallel_cross_entropy"]


def _collective(op: Any, group: Any) -> Any:
    def reduce(t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous().clone()  # all_reduce works in place; never touch a caller's tensor
        dist.all_reduce(t, op=op, group=group)
        return t

    return reduce


class VocabParallelCrossEntropyFunction(torch.autograd.Function):
    """Forward: the sharded loss with its collectives; backward: the local closed form."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, local_logits: Any, labels: Any, offset: int, opts: VocabParallelOptions, group: Any
    ) -> Any:
        loss, lse, scale = vocab_parallel_forward(
            local_logits, labels, offset, opts,
            _collective(dist.ReduceOp.MAX, group), _collective(dist.ReduceOp.SUM, group),
        )
        ctx.offset, ctx.opts, ctx.scale = offset, opts, scale
        ctx.save_for_backward(local_logits, labels, lse)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:  # type: ignore[override]
        local_logits, labels, lse = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[0]:
            g = vocab_parallel_backward(local_logits, labels, ctx.offset, ctx.opts, lse, ctx.scale, cotangent)
        return g, None, None, None, None


def vocab_parallel_cross_entropy(
    local_logits: Any, labels: Any, offset: int, opts: VocabParallelOptions, group: Any = None
) -> Any:
    """The loss of this rank's call (identical on every rank of ``group``)."""
    wants_grad = torch.is_grad_enabled() and local_logits.requires_grad
    if not wants_grad:
        return vocab_parallel_forward(
            local_logits, labels, offset, opts,
            _collective(dist.ReduceOp.MAX, group), _collective(dist.ReduceOp.SUM, group),
        )[0]
    return VocabParallelCrossEntropyFunction.apply(local_logits, labels, offset, opts, group)
