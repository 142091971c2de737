"""The PyTorch autodiff layer: the closed-form gradients as ``torch.autograd.Function``\\ s,
and :class:`TorchLosses`, the one place that chooses a call's path (the path table in
docs/transforms.md).

The dense loss composes with every transform ``F.cross_entropy`` does: ``torch.func``
(grad, vjp, jacrev, jacfwd, hessian, vmap: ``setup_context``, a generated vmap rule and
a ``jvp``), forward-mode dual tensors, double backward (a backward that is itself
differentiable while ``create_graph`` is on), gradcheck and gradgradcheck, meta and
fake tensors, ``torch.compile(fullgraph=True)`` (a variant without the ``jvp``, which
Dynamo cannot trace) and ``torch.export``. The chunked linear and the vocab-parallel
losses support first derivatives through ``torch.autograd``; differentiating their
gradients raises a ``RuntimeError`` (PyTorch's ``once_differentiable`` message, always,
not only when the cotangent requires grad), and so does calling them under a
``torch.func`` transform.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from smoothloss import _core, _linear, _vocab_parallel
from smoothloss.backends import torch_compiled
from smoothloss.backends._autodiff import Closed, Losses
from smoothloss.backends._base import native_kernels
from smoothloss.backends.torch import FW, functorch_wrapped
from smoothloss.backends.torch_compiled import COMPILED, _Flat

__all__ = ["LOSSES", "SMALL_CALL", "TorchLosses"]

# Eager calls on at most this many logits make the gradient in the forward
# (:class:`_SmallCrossEntropyFunction`): where the per-call work outweighs the passes, and
# keeping a gradient-sized array from the forward to the backward costs at most 256 KiB
# in float32.
SMALL_CALL = 1 << 16

EAGER = Closed(FW)


def _refuse_torch_func(name: str, *tensors: Any) -> None:
    """A clear error for the first-order losses under torch.func (PyTorch's own names a
    missing ``setup_context``): their gradients are made chunk by chunk, or with
    collectives, by a backward that neither vmap nor forward mode can run."""
    if any(t is not None and functorch_wrapped(t) for t in tensors):
        raise RuntimeError(
            f"{name} does not support torch.func transforms (grad, vjp, jacrev, jacfwd, hessian, vmap) "
            "or forward-mode AD: it has first derivatives through torch.autograd only "
            "(loss.backward(), torch.autograd.grad). Under torch.func, use "
            "smoothloss.cross_entropy on the logits (hidden @ weight.T + bias)."
        )


class _FirstOrderOnly(torch.autograd.Function):
    """The gradients of a first-order-only loss, made while ``create_graph`` is on, tied to
    the tensors they depend on (the loss's inputs and the cotangent): differentiating
    them raises. Without it they would come back as constants (PyTorch's
    ``once_differentiable`` marks them only when the cotangent requires grad), and a
    second derivative through them would silently be 0."""

    @staticmethod
    def forward(ctx: Any, name: str, count: int, *tensors: Any) -> Any:
        ctx.name = name
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def backward(ctx: Any, *_: Any) -> Any:
        raise RuntimeError(
            f"{ctx.name} has first derivatives only: trying to differentiate twice a function that was "
            "marked with @once_differentiable (its backward is a closed form that autograd cannot "
            "differentiate again). For second derivatives (double backward, Hessian-vector products, "
            "gradgradcheck) use smoothloss.cross_entropy on the logits."
        )


def _first_order_only(name: str, grads: tuple[Any, ...], depends_on: tuple[Any, ...]) -> tuple[Any, ...]:
    """``grads`` as they are without ``create_graph``; with it, tied by :class:`_FirstOrderOnly`."""
    if not torch.is_grad_enabled():
        return grads
    given = [g for g in grads if g is not None]
    if not given:
        return grads
    tied = iter(_FirstOrderOnly.apply(name, len(given), *given, *(t for t in depends_on if t is not None)))
    return tuple(None if g is None else next(tied) for g in grads)


def _tracked(*tensors: Any) -> bool:
    """Whether autograd, forward-mode AD or a torch.func transform may differentiate."""
    compiling = torch.compiler.is_compiling()
    for t in tensors:
        if t is None:
            continue
        if torch.is_grad_enabled() and t.requires_grad:
            return True
        if compiling:  # Dynamo: neither test below traces; forward AD is not compiled
            continue
        if functorch_wrapped(t) or torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def _scale_tensor(scale: Any, stats: Any) -> Any:
    """The reduction's scale as a 0-d tensor of the statistics' dtype and device (an
    autograd output or saved tensor); torch.full keeps a symbolic float (1/N) symbolic."""
    return scale if isinstance(scale, torch.Tensor) else torch.full((), scale, dtype=stats.dtype, device=stats.device)


class CrossEntropyFunction(torch.autograd.Function):
    """Forward saves the inputs, each position's log-sum-exp (O(B)) and the reduction's
    scale; backward recomputes softmax in one pass and applies the closed form. With
    ``create_graph`` on, the backward recomputes the statistics from the inputs with
    out-of-place kernels, so that autograd can differentiate it again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Any, targets: Any, weight: Any, opts: _core.Options, closed: Closed) -> Any:
        loss, stats, scale = closed.forward(logits, targets, weight, opts)
        return loss, stats, _scale_tensor(scale, stats)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        logits, targets, weight, opts, closed = inputs
        loss, stats, scale = output
        ctx.opts, ctx.closed = opts, closed
        ctx.mark_non_differentiable(stats, scale)
        ctx.save_for_backward(logits, targets, weight, stats, scale, loss)
        ctx.save_for_forward(logits, targets, weight)

    @staticmethod
    def backward(ctx: Any, cotangent: Any, _stats: Any, _scale: Any) -> Any:
        logits, targets, weight, stats, scale, loss = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        closed, opts = ctx.closed, ctx.opts
        if torch.is_grad_enabled():  # create_graph: every statistic as a function of the inputs
            grads = _recomputed_grads(closed.fw, logits, targets, weight, opts, cotangent, needs)
        elif any(functorch_wrapped(t) for t in (cotangent, logits, targets, weight) if t is not None):
            # under vmap (batched gradients, jacrev): the native kernels write in place,
            # which vmap refuses where a batched operand meets an unbatched result
            with native_kernels(False):
                grads = _core.backward(closed.fw, logits, targets, weight, opts, stats, scale, loss, cotangent, needs)
        else:
            grads = closed.backward(logits, targets, weight, opts, stats, scale, loss, cotangent, needs)
        return (*grads, None, None)

    @staticmethod
    def jvp(ctx: Any, t_logits: Any, t_targets: Any, t_weight: Any, _opts: Any, _closed: Any) -> Any:
        logits, targets, weight = ctx.saved_tensors
        with native_kernels(False):
            _, tangent = _core.jvp(ctx.closed.fw, logits, targets, weight, ctx.opts, (t_logits, t_targets, t_weight))
        return tangent, None, None


class _SmallCrossEntropyFunction(torch.autograd.Function):
    """The dense loss for small eager calls (at most ``SMALL_CALL`` logits) with a scalar
    loss whose only differentiable input is the logits: the forward also makes the
    logits' gradient at cotangent 1, while the row statistics are at hand, and the
    backward scales it by the cotangent. At these sizes a call's cost is mostly per-op
    and per-call work, which this cuts for the backward (one output, three saved tensors, no second pass of the
    core); the gradient (as large as the logits, which are small here) is kept from the
    forward to the backward. Double backward, batched gradients and forward mode run
    :class:`CrossEntropyFunction`'s rules on the saved inputs."""

    @staticmethod
    def forward(ctx: Any, logits: Any, targets: Any, weight: Any, opts: _core.Options, closed: Closed) -> Any:
        # the gradient: not a saved tensor (made here, never handed out, so never modified in place)
        loss, ctx.grad = closed.forward_and_grad(logits, targets, weight, opts)  # (never a compiled closed form)
        ctx.opts, ctx.closed = opts, closed
        ctx.save_for_backward(logits, targets, weight)
        if _forward_ad_level() >= 0:  # a dual level is open: the jvp may be asked for
            ctx.save_for_forward(logits, targets, weight)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        if torch.is_grad_enabled() or functorch_wrapped(cotangent):
            grads = _recomputed_grads(ctx.closed.fw, *ctx.saved_tensors, ctx.opts, cotangent, (True, False, False))
            return (*grads, None, None)
        return ctx.grad * cotangent, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        return CrossEntropyFunction.jvp(ctx, *tangents)[0]  # the loss's tangent (its one output)


def _recomputed_grads(fw: Any, logits: Any, targets: Any, weight: Any, opts: _core.Options, cotangent: Any,
                      needs: tuple[bool, ...]) -> Any:
    """The gradients with every statistic recomputed from the inputs by out-of-place
    kernels: differentiable again under ``create_graph``, and batchable by vmap."""
    with native_kernels(False):
        loss, stats, scale = _core.forward(fw, logits, targets, weight, opts)
        return _core.backward(fw, logits, targets, weight, opts, stats, scale, loss, cotangent, needs)


def _forward_ad_level() -> int:
    """The innermost open ``torch.autograd.forward_ad.dual_level`` (-1: none, so no input
    can carry a tangent). Read from torch's module; where a torch lacks it, 0 (assume open)."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0)


class _ExpKeptCrossEntropyFunction(torch.autograd.Function):
    """The compiled dense loss of eager calls on integer labels whose only differentiable
    input is the logits (float32 or float64, no softcap): the forward's graph also writes
    ``e = exp(x - m)``, the exponentials its row sums add up, and the backward turns e
    into the gradient in its place, in one pass with no exp (where
    :class:`CrossEntropyFunction`'s backward reads the logits and exponentiates them
    again). e is the gradient's memory, held from the forward on, as large as the logits.
    A second backward of the same graph (``retain_graph``), double backward and batched
    gradients run :class:`CrossEntropyFunction`'s backward on the saved inputs."""

    @staticmethod
    def forward(ctx: Any, logits: Any, targets: Any, weight: Any, opts: _core.Options, closed: Any) -> Any:
        flat = _Flat(logits, targets, weight, opts)
        loss, stats, scale, ctx.e = closed.forward_kept(flat)  # (e: not a saved tensor, never handed out)
        if ctx.e is None:  # compiling failed: the eager kernels
            loss, stats, scale = EAGER.forward(logits, targets, weight, opts)
        scale = _scale_tensor(scale, stats)
        flat.x = None  # (the backward reads the labels, weight and layout only)
        ctx.opts, ctx.closed, ctx.flat = opts, closed, flat
        ctx.save_for_backward(logits, targets, weight, stats, scale, loss)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        e, ctx.e = ctx.e, None  # the first backward takes e; a second one finds None
        if e is not None and not torch.is_grad_enabled() and not functorch_wrapped(cotangent):
            _, _, _, stats, scale, _ = ctx.saved_tensors  # (checks that no input was changed in place)
            g = ctx.closed.grad_from_exp(ctx.flat, e, stats, scale, cotangent)
            if g is not None:
                return g, None, None, None, None
        return CrossEntropyFunction.backward(ctx, cotangent, None, None)


class _CompiledCrossEntropyFunction(CrossEntropyFunction):
    """:class:`CrossEntropyFunction` without its ``jvp``, for Dynamo: torch.compile cannot
    trace an ``autograd.Function`` with a custom ``jvp`` (it would break the graph, an
    error under ``fullgraph=True``). Compiled graphs are differentiated in reverse mode."""

    jvp = staticmethod(torch.autograd.Function.jvp)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """For ``"mean"``/``"sum"`` the forward also makes the gradients at cotangent 1 (one
    pass over the chunks instead of two) and the backward scales them in place. The
    saved tensors are the inputs and the per-row log-sum-exp (O(N)); a second backward
    of the same graph (``retain_graph=True``), and ``"none"``, make each chunk's logits
    again. No N×V tensor is kept. First derivatives only."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, closed: Any) -> Any:
        needs = tuple(ctx.needs_input_grad[:3])
        loss, stats, scale, grads = _linear.chunked_forward(closed, hidden, weight, bias, labels, opts, chunk, needs)
        ctx.opts, ctx.chunk, ctx.scale, ctx.closed = opts, chunk, scale, closed
        # not saved tensors: the first backward scales them in place and drops them
        ctx.grads = grads
        ctx.save_for_backward(hidden, weight, bias, labels, stats)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        hidden, weight, bias, labels, stats = ctx.saved_tensors
        batched = functorch_wrapped(cotangent)  # is_grads_batched (gradcheck): vmap refuses in-place kernels
        # (no native_kernels context unless batched: Dynamo cannot trace ContextVar.set)
        with torch.no_grad(), native_kernels(False) if batched else contextlib.nullcontext():
            grads, ctx.grads = ctx.grads, None
            if grads is None:
                needs = tuple(ctx.needs_input_grad[:3])
                grads = _linear.chunked_backward(
                    ctx.closed, hidden, weight, bias, labels, ctx.opts, ctx.chunk, stats, ctx.scale, cotangent, needs
                )
            elif batched:
                grads = tuple(None if g is None else g * cotangent for g in grads)
            else:
                grads = tuple(None if g is None else g.mul_(cotangent) for g in grads)
        grads = _first_order_only("smoothloss.linear_cross_entropy", grads, (hidden, weight, bias, cotangent))
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
        loss, stats, scale = _vocab_parallel.vocab_parallel_forward(
            fw, local_logits, labels, offset, num_classes, opts, *_collectives(group)
        )
        ctx.offset, ctx.num_classes, ctx.opts, ctx.scale, ctx.fw = offset, num_classes, opts, scale, fw
        ctx.save_for_backward(local_logits, labels, stats)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:  # type: ignore[override]
        local_logits, labels, stats = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[0]:
            with torch.no_grad():
                g = _vocab_parallel.vocab_parallel_backward(
                    ctx.fw, local_logits, labels, ctx.offset, ctx.num_classes, ctx.opts, stats, ctx.scale, cotangent
                )
            (g,) = _first_order_only("smoothloss vocab_parallel_cross_entropy", (g,), (local_logits, cotangent))
        return g, None, None, None, None, None, None


class TorchLosses(Losses):
    """torch's entry points. :meth:`closed` and :meth:`cross_entropy` are the path table:

    ========================================  ===========================================
    condition                                 path
    ========================================  ===========================================
    inside the caller's ``torch.compile``     the eager closed form, traced inline
                                              (:class:`_CompiledCrossEntropyFunction`)
    no input is differentiated                the closed form's forward alone
    a ``torch.func`` transform is active      :class:`CrossEntropyFunction`, eager
    compiled (:func:`torch_compiled.wanted`),  :class:`_ExpKeptCrossEntropyFunction`: the
    integer labels, first order                forward keeps exp(x - m), the backward
                                              makes the gradient in its place
    eager, at most ``SMALL_CALL`` logits,     :class:`_SmallCrossEntropyFunction`: the
    scalar loss, first order                  gradient made in the forward
    anything else                             :class:`CrossEntropyFunction`
    ========================================  ===========================================
    """

    def closed(self, like: Any, numel: Any, *, targets: Any = None, weight: Any = None, opts: Any = None,
               chunked: bool = False) -> Closed:
        if not torch_compiled.wanted(like, numel):
            return self.eager
        if opts is None or torch_compiled.warmed_up(torch_compiled.signature(like, targets, weight, opts, chunked)):
            return COMPILED
        return self.eager

    def cross_entropy(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        if torch.compiler.is_compiling():  # traced into the caller's graph
            if not _tracked(logits, targets, weight):
                return self.eager.forward(logits, targets, weight, opts)[0]
            return _CompiledCrossEntropyFunction.apply(logits, targets, weight, opts, self.eager)[0]
        numel = logits.numel()
        closed = self.closed(logits, numel, targets=targets, weight=weight, opts=opts)
        if not _tracked(logits, targets, weight):  # inference: the forward alone
            return closed.forward(logits, targets, weight, opts)[0]
        if torch._C._are_functorch_transforms_active():  # torch.func: the eager closed form, traceable
            return CrossEntropyFunction.apply(logits, targets, weight, opts, self.eager)[0]
        first_order = not targets.requires_grad and (weight is None or not weight.requires_grad)
        if closed is COMPILED:
            if first_order and _forward_ad_level() < 0 and COMPILED.keeps_exp(logits, targets, opts):
                return _ExpKeptCrossEntropyFunction.apply(logits, targets, weight, opts, COMPILED)
        elif numel <= SMALL_CALL and opts.reduction != "none" and first_order:
            return _SmallCrossEntropyFunction.apply(logits, targets, weight, opts, closed)
        return CrossEntropyFunction.apply(logits, targets, weight, opts, closed)[0]

    def linear_cross_entropy(
        self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, class_weight: Any = None
    ) -> Any:
        _refuse_torch_func("smoothloss.linear_cross_entropy", hidden, weight, bias, labels)
        if class_weight is None:
            closed = self.linear_closed(hidden, weight, opts, chunk)  # each chunk's closed form, compiled where it pays
        else:  # the compiled graphs take no class weight
            closed = _linear.with_class_weight(self.eager, class_weight)
        if not _tracked(hidden, weight, bias):
            return _linear.chunked_forward(closed, hidden, weight, bias, labels, opts, chunk)[0]
        return LinearCrossEntropyFunction.apply(hidden, weight, bias, labels, opts, chunk, closed)

    def vocab_parallel(self, local_logits: Any, labels: Any, offset: int, num_classes: int, opts: Any, group: Any) -> Any:
        """The vocab-parallel loss over ``torch.distributed`` ``group`` (two all-reduces)."""
        _refuse_torch_func("smoothloss vocab_parallel_cross_entropy", local_logits, labels)
        if not _tracked(local_logits):
            return _vocab_parallel.vocab_parallel_forward(
                FW, local_logits, labels, offset, num_classes, opts, *_collectives(group)
            )[0]
        return VocabParallelFunction.apply(local_logits, labels, offset, num_classes, opts, group, FW)

    def vocab_parallel_linear(
        self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, offset: int, num_classes: int,
        group: Any,
    ) -> Any:
        """The chunked linear loss over this rank's rows ``weight`` of a projection sharded
        by class, over ``torch.distributed`` ``group`` (two all-reduces a chunk, one for
        the hidden gradient)."""
        _refuse_torch_func("smoothloss vocab_parallel_linear_cross_entropy", hidden, weight, bias, labels)
        closed = _vocab_parallel.Sharded(self.eager, offset, num_classes, *_collectives(group))
        if not _tracked(hidden, weight, bias):
            return _linear.chunked_forward(closed, hidden, weight, bias, labels, opts, chunk)[0]
        return LinearCrossEntropyFunction.apply(hidden, weight, bias, labels, opts, chunk, closed)


LOSSES = TorchLosses(FW, EAGER)
