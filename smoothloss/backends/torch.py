"""The PyTorch binding: native kernels, value checks that respect fake, meta and
functorch tensors, and the closed-form gradients as ``torch.autograd.Function``\\ s.

The dense loss composes with every transform ``F.cross_entropy`` does: ``torch.func``
(grad, vjp, jacrev, jacfwd, hessian, vmap: ``setup_context``, a generated vmap rule and
a ``jvp``), forward-mode dual tensors, double backward (a backward that is itself
differentiable while ``create_graph`` is on), gradcheck and gradgradcheck. The chunked
linear and the vocab-parallel losses support first derivatives; differentiating their
backward raises PyTorch's ``once_differentiable`` error.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import torch
from torch.autograd.function import once_differentiable

from smoothloss import _core, _linear, _vocab_parallel
from smoothloss.backends._base import Framework, Kernels, native_kernels

__all__ = ["TorchFramework"]


def _scaled(g: torch.Tensor, scale: Any, shift: Any) -> torch.Tensor:
    if not isinstance(scale, float) or scale != 1.0:
        g = g.mul_(scale)
    if not isinstance(shift, float) or shift != 0.0:
        g = g.sub_(shift)
    return g


class TorchKernels(Kernels):
    """Fused and in-place kernels: fewer B×K passes and allocations than the composition."""

    def logsumexp(self, x: Any) -> Any:
        # torch's fused log_softmax kernel is several times faster on the CPU than
        # torch.logsumexp; read the log-sum-exp off it at each row's maximum, where
        # log p = max - lse is computed without cancellation.
        m, at = torch.max(x, dim=-1, keepdim=True)
        return (m - torch.log_softmax(x, dim=-1).gather(-1, at)).squeeze(-1)

    def softmax_affine(self, x: Any, lse: Any, scale: Any, shift: Any, *, row_lse: bool = True) -> Any:
        if not row_lse:  # a shard's global lse: the fused softmax would normalise locally
            return super().softmax_affine(x, lse, scale, shift, row_lse=False)
        return _scaled(torch.softmax(x, dim=-1), scale, shift)  # softmax = exp(x - lse)

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        v = values if isinstance(values, torch.Tensor) else torch.full_like(labels, values, dtype=g.dtype)
        v = v.expand(labels.shape) if v.shape != labels.shape else v
        return g.scatter_add_(-1, labels.unsqueeze(-1), v.to(g.dtype).unsqueeze(-1))

    def add_matmul(self, acc: Any, a: Any, b: Any) -> Any:
        if acc is not None and a.dtype == acc.dtype == b.dtype:
            return acc.addmm_(a, b)
        return super().add_matmul(acc, a, b)


def _functorch_wrapped(x: Any) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check is not None and check(x))


class TorchFramework(Framework):
    name = "torch"
    native_kernel_class = TorchKernels

    def is_concrete(self, x: Any) -> bool:
        if x.device.type == "meta" or type(x) not in (torch.Tensor, torch.nn.Parameter):
            return False  # meta tensors and subclasses (FakeTensor, DTensor, ...) have no values here
        if _functorch_wrapped(x):  # under torch.func: vmap's batched tensors cannot be read
            return False
        return not (torch.compiler.is_compiling() or torch.jit.is_tracing())

    def device(self, x: Any) -> Any:
        return x.device

    def cross_entropy(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        if not _tracked(logits, targets, weight):  # inference: the forward alone
            return _core.forward(self, logits, targets, weight, opts)[0]
        return CrossEntropyFunction.apply(logits, targets, weight, opts, self)[0]

    def linear_cross_entropy(self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int) -> Any:
        if not _tracked(hidden, weight, bias):
            return _linear.chunked_forward(self, hidden, weight, bias, labels, opts, chunk)[0]
        return LinearCrossEntropyFunction.apply(hidden, weight, bias, labels, opts, chunk, self)

    def vocab_parallel(self, local_logits: Any, labels: Any, offset: int, num_classes: int, opts: Any, group: Any) -> Any:
        """The vocab-parallel loss over ``torch.distributed`` ``group`` (two all-reduces)."""
        if not _tracked(local_logits):
            return _vocab_parallel.vocab_parallel_forward(
                self, local_logits, labels, offset, num_classes, opts, *_collectives(group)
            )[0]
        return VocabParallelFunction.apply(local_logits, labels, offset, num_classes, opts, group, self)


def _tracked(*tensors: Any) -> bool:
    """Whether autograd, forward-mode AD or a torch.func transform may differentiate."""
    for t in tensors:
        if t is None:
            continue
        if torch.is_grad_enabled() and t.requires_grad:
            return True
        if _functorch_wrapped(t) or torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


class CrossEntropyFunction(torch.autograd.Function):
    """Forward saves the inputs, each position's log-sum-exp (O(B)) and the reduction's
    scale; backward recomputes softmax in one pass and applies the closed form. With
    ``create_graph`` on, the backward recomputes the statistics from the inputs with
    out-of-place kernels, so that autograd can differentiate it again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Any, targets: Any, weight: Any, opts: _core.Options, fw: TorchFramework) -> Any:
        loss, lse, scale = _core.forward(fw, logits, targets, weight, opts)
        return loss, lse, torch.as_tensor(scale, dtype=lse.dtype, device=lse.device)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        logits, targets, weight, opts, fw = inputs
        loss, lse, scale = output
        ctx.opts, ctx.fw = opts, fw
        ctx.mark_non_differentiable(lse, scale)
        ctx.save_for_backward(logits, targets, weight, lse, scale, loss)
        ctx.save_for_forward(logits, targets, weight)

    @staticmethod
    def backward(ctx: Any, cotangent: Any, _lse: Any, _scale: Any) -> Any:
        logits, targets, weight, lse, scale, loss = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        fw, opts = ctx.fw, ctx.opts
        if torch.is_grad_enabled():  # create_graph: every statistic as a function of the inputs
            with native_kernels(False):
                loss, lse, scale = _core.forward(fw, logits, targets, weight, opts)
                grads = _core.backward(fw, logits, targets, weight, opts, lse, scale, loss, cotangent, needs)
        else:
            grads = _core.backward(fw, logits, targets, weight, opts, lse, scale, loss, cotangent, needs)
        return (*grads, None, None)

    @staticmethod
    def jvp(ctx: Any, t_logits: Any, t_targets: Any, t_weight: Any, _opts: Any, _fw: Any) -> Any:
        logits, targets, weight = ctx.saved_tensors
        with native_kernels(False):
            _, tangent = _core.jvp(ctx.fw, logits, targets, weight, ctx.opts, (t_logits, t_targets, t_weight))
        return tangent, None, None


class LinearCrossEntropyFunction(torch.autograd.Function):
    """For ``"mean"``/``"sum"`` the forward also makes the gradients at cotangent 1 (one
    pass over the chunks instead of two) and the backward scales them in place. The
    saved tensors are the inputs and the per-row log-sum-exp (O(N)); a second backward
    of the same graph (``retain_graph=True``), and ``"none"``, make each chunk's logits
    again. No N×V tensor is kept. First derivatives only."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, fw: Any) -> Any:
        needs = tuple(ctx.needs_input_grad[:3])
        loss, lse, scale, grads = _linear.chunked_forward(fw, hidden, weight, bias, labels, opts, chunk, needs)
        ctx.opts, ctx.chunk, ctx.scale, ctx.fw = opts, chunk, scale, fw
        # not saved tensors: the first backward scales them in place and drops them
        ctx.grads = grads
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: Any) -> Any:
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            hidden, weight, bias, labels, lse = ctx.saved_tensors
            needs = tuple(ctx.needs_input_grad[:3])
            grads = _linear.chunked_backward(
                ctx.fw, hidden, weight, bias, labels, ctx.opts, ctx.chunk, lse, ctx.scale, cotangent, needs
            )
        else:
            grads = tuple(None if g is None else g.mul_(cotangent) for g in grads)
        return (*grads, None, None, None, None)


def _collectives(group: Any) -> tuple[Any, Any]:
    import torch.distributed as dist

    def collective(op: Any) -> Any:
        def reduce(t: torch.Tensor) -> torch.Tensor:
            t = t.contiguous().clone()  # all_reduce works in place; never touch a caller's tensor
            dist.all_reduce(t, op=op, group=group)
            return t

        return reduce

    return collective(dist.ReduceOp.MAX), collective(dist.ReduceOp.SUM)


class VocabParallelFunction(torch.autograd.Function):
    """Forward: the sharded loss with its collectives; backward: the local closed form,
    no collective. First derivatives only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, local_logits: Any, labels: Any, offset: int, num_classes: int, opts: Any, group: Any, fw: Any
    ) -> Any:
        loss, lse, scale = _vocab_parallel.vocab_parallel_forward(
            fw, local_logits, labels, offset, num_classes, opts, *_collectives(group)
        )
        ctx.offset, ctx.num_classes, ctx.opts, ctx.scale, ctx.fw = offset, num_classes, opts, scale, fw
        ctx.save_for_backward(local_logits, labels, lse)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: Any) -> Any:  # type: ignore[override]
        local_logits, labels, lse = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[0]:
            g = _vocab_parallel.vocab_parallel_backward(
                ctx.fw, local_logits, labels, ctx.offset, ctx.num_classes, ctx.opts, lse, ctx.scale, cotangent
            )
        return g, None, None, None, None, None, None


def binding() -> TorchFramework:
    return TorchFramework(array_api_compat.array_namespace(torch.empty(0)))
