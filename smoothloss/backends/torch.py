"""The PyTorch binding: native kernels, value checks that respect fake, meta and
functorch tensors, and the closed-form gradients as ``torch.autograd.Function``\\ s.

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
import functools
import os
import types
from dataclasses import replace
from typing import Any

import array_api_compat
import torch

from smoothloss import _core, _linear, _vocab_parallel
from smoothloss.backends._base import (
    Framework, Kernels, compile_failed, compile_wanted, native_kernels, use_native_kernels,
)

__all__ = ["TorchFramework"]


def _scaled(g: torch.Tensor, scale: Any, shift: Any) -> torch.Tensor:
    if not isinstance(scale, float) or scale != 1.0:
        g = g.mul_(scale)
    if not isinstance(shift, float) or shift != 0.0:
        g = g.sub_(shift)
    return g


def _label_values(g: torch.Tensor, labels: torch.Tensor, values: Any) -> torch.Tensor:
    """``values`` (a float, or one per position) as ``scatter_add``'s source: g's dtype,
    the labels' shape, and a trailing class axis of 1."""
    if not isinstance(values, torch.Tensor):
        return torch.full((*labels.shape, 1), values, dtype=g.dtype, device=g.device)
    v = values if values.dtype == g.dtype else values.to(g.dtype)
    return (v if v.shape == labels.shape else v.expand(labels.shape)).unsqueeze(-1)


# Logits in a call whose ops cost more to call than to run (measured, 2 threads: an op's
# call about 2-3 µs, a pass over 4096 float32 logits under 1 µs)
_TINY = 4096


def _row_kernels(x: Any) -> bool:
    """Whether torch's fused softmax kernels serve rows of ``x``'s length (else: the
    elementwise composition). On the CPU they are slow on many short rows whose length is
    no multiple of the vector width (measured, 2 threads: softmax of 4096×10 takes 502 µs,
    of 4096×16 52 µs; the composition of 4096×10 75 µs), and no faster up to rows of about
    a thousand classes; on tiny inputs, where each op's call costs more than its loop,
    fewer ops win."""
    if not x.is_cpu:
        return True
    K = x.shape[-1]
    return K >= 1024 or x.numel() <= _TINY


class TorchKernels(Kernels):
    """Fused and in-place kernels: fewer B×K passes and allocations than the composition."""

    def log_softmax_stats(
        self, x: Any, weight: Any = None, sum_w: Any = None, labels: Any = None, *, stats: bool = True
    ) -> tuple[Any, Any, Any, Any]:
        y = None if labels is None else labels.unsqueeze(-1)
        if _row_kernels(x):
            # torch's fused log_softmax computes (x - max) - log Σ exp(x - max): lse_rel is
            # minus its row maximum (exactly: at the row's maximum it is 0 - lse_rel, and
            # nowhere more), -log p at each label has the roundings of lse_rel + (m - x_y),
            # and the weighted sum of -log p comes off the same temporary. Without stats,
            # m and lse_rel are not made and log p takes their place: this class's
            # softmax_affine exponentiates it (one pass) instead of taking the softmax of x.
            log_p = torch.log_softmax(x, dim=-1)
            m, lse_rel = None, log_p
            if x.numel() <= _TINY:  # each op's call costs more than its loop: negate once, not per statistic
                nlp = log_p.neg()
                if stats:
                    m, lse_rel = x.amax(-1), nlp.amin(-1)  # (negating is exact)
                sum_nll = None if sum_w is None else (nlp.sum(-1) if weight is None else nlp @ weight)
                nll_y = None if y is None else nlp.gather(-1, y).squeeze(-1)
                return m, lse_rel, sum_nll, nll_y
            if stats:
                m = x.amax(-1)  # (torch.max with indices is many times slower on the CPU)
                lse_rel = log_p.amax(-1).neg()  # (out of place: amax's own gradient reads its result)
            sum_nll = None if sum_w is None else (log_p.sum(-1) if weight is None else log_p @ weight).neg_()
            nll_y = None if y is None else log_p.gather(-1, y).squeeze(-1).neg_()
            return m, lse_rel, sum_nll, nll_y
        m = x.amax(-1)
        # the composition, in one temporary: z = x - m, its sums, then exp in place. (No
        # result here is changed in place after an op whose gradient reads it: a traced
        # program, such as torch.export's, differentiates these kernels.)
        z = x - m.unsqueeze(-1)
        sum_z = None if sum_w is None else (z.sum(-1) if weight is None else z @ weight)
        z_y = None if y is None else z.gather(-1, y).squeeze(-1)
        e = z.exp() if z.requires_grad else z.exp_()  # (in place only where autograd does not record)
        lse_rel = e.sum(-1).log()  # (out of place: log's gradient reads its input)
        sum_nll = None if sum_w is None else lse_rel * sum_w - sum_z
        return m, lse_rel, sum_nll, None if y is None else lse_rel - z_y

    def softmax_affine(self, x: Any, stats: Any, scale: Any, shift: Any, *, row_lse: bool = True) -> Any:
        m, lse_rel = stats
        if m is None:  # log_softmax_stats(x, stats=False) left x's log-probabilities: exp in place
            g = lse_rel.exp() if lse_rel.requires_grad else lse_rel.exp_()  # (log_softmax's gradient reads them)
        elif not row_lse or not _row_kernels(x):  # (row_lse=False: a shard's global statistics)
            g = torch.sub(x, m.unsqueeze(-1)).sub_(lse_rel.unsqueeze(-1)).exp_()
        else:
            g = torch.softmax(x, dim=-1)
        return _scaled(g, scale, shift)

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        if isinstance(values, float):  # one value for every position: no source tensor to make
            return g.scatter_(-1, labels.unsqueeze(-1), values, reduce="add")
        return g.scatter_add_(-1, labels.unsqueeze(-1), _label_values(g, labels, values))

    def add_scaled(self, a: Any, b: Any, c: Any) -> Any:
        # one op: a Python float as alpha costs nothing, as a multiplier it becomes a scalar
        # tensor of its own (about 1 µs per op on small inputs)
        return torch.add(a, b, alpha=c) if isinstance(c, float) else a + b * c

    def add_matmul(self, acc: Any, a: Any, b: Any) -> Any:
        if acc is not None and a.dtype == acc.dtype == b.dtype:
            return acc.addmm_(a, b)
        return super().add_matmul(acc, a, b)


def _functorch_wrapped(x: Any) -> bool:
    """Whether ``x`` is a torch.func wrapper (vmap's batched, grad's or jvp's tracking
    tensor) or a legacy batched tensor (``torch.autograd.grad(..., is_grads_batched=True)``,
    gradcheck's batched-gradient check).

    Always False while Dynamo traces: it cannot call these C functions, and the tensors
    it traces are its own proxies, never functorch wrappers."""
    return not torch.compiler.is_compiling() and _wrapped(x)


def _wrapped(x: Any) -> bool:
    """:func:`_functorch_wrapped` outside Dynamo."""
    for check in _FUNCTORCH_CHECKS:
        if check(x):
            return True
    return False


# (looked up once: this runs several times per call)
_FUNCTORCH_CHECKS = tuple(
    check for check in (getattr(torch._C._functorch, name, None)
                        for name in ("is_functorch_wrapped_tensor", "is_legacy_batchedtensor"))
    if check is not None
)


_PLAIN = (torch.Tensor, torch.nn.Parameter)

# Dynamo cannot trace ContextVar.get: while compiling, the kernels switch is read once,
# at trace time, as a constant (a compiled function keeps the choice it was traced with).
_native_kernels_in_force = torch.compiler.assume_constant_result(use_native_kernels)


class TorchFramework(Framework):
    name = "torch"
    native_kernel_class = TorchKernels

    @property
    def kernels(self) -> Kernels:
        if torch.compiler.is_compiling():
            return self.native if _native_kernels_in_force() else self.reference
        return self.native if use_native_kernels() else self.reference

    def cacheable(self) -> bool:
        return not torch.compiler.is_compiling()

    def is_concrete(self, x: Any) -> bool:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return False  # first: Dynamo cannot trace the functorch test below
        if type(x) not in _PLAIN or x.is_meta:
            return False  # meta tensors and subclasses (FakeTensor, DTensor, ...) have no values here
        return not _wrapped(x)  # under torch.func: vmap's batched tensors cannot be read

    def device(self, x: Any) -> Any:
        return x.device

    def bounds(self, y: Any) -> tuple[int | None, int | None]:
        lo, hi = torch.aminmax(y)  # one pass
        return int(lo), int(hi)

    def cross_entropy(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        if torch.compiler.is_compiling():  # traced into the caller's graph
            if not _tracked(logits, targets, weight):
                return self.closed_forward(logits, targets, weight, opts)[0]
            return _CompiledCrossEntropyFunction.apply(logits, targets, weight, opts, self)[0]
        numel = logits.numel()
        fw = self.fused(logits, numel)
        if not _tracked(logits, targets, weight):  # inference: the forward alone
            return fw.closed_forward(logits, targets, weight, opts)[0]
        if torch._C._are_functorch_transforms_active():
            return CrossEntropyFunction.apply(logits, targets, weight, opts, self)[0]
        # Outside torch.func, Function.apply's only extra steps are unwrapping tensors that
        # a finished torch.func transform left behind, and binding the arguments with
        # inspect.signature, on every call (a third of a 32×10 step); all five are given
        # positionally here, so the autograd C apply is called directly.
        logits, targets = _unwrap_if_dead(logits), _unwrap_if_dead(targets)
        weight = None if weight is None else _unwrap_if_dead(weight)
        first_order = not targets.requires_grad and (weight is None or not weight.requires_grad)
        if fw is self and numel <= SMALL_CALL and opts.reduction != "none" and first_order:
            return _small_apply(logits, targets, weight, opts, fw)
        if fw is not self and first_order and _forward_ad_level() < 0 and fw.keeps_exp(logits, targets, opts):
            return _exp_kept_apply(logits, targets, weight, opts, fw)
        return _autograd_apply(logits, targets, weight, opts, fw)[0]

    def fused(self, like: Any, numel: Any) -> Any:
        return COMPILED if _compiles(like, numel) else self

    def linear_cross_entropy(self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int) -> Any:
        _refuse_torch_func("smoothloss.linear_cross_entropy", hidden, weight, bias, labels)
        fw = self.fused(hidden, chunk * weight.shape[0])  # each chunk's closed form, compiled where it pays
        if not _tracked(hidden, weight, bias):
            return _linear.chunked_forward(fw, hidden, weight, bias, labels, opts, chunk)[0]
        return LinearCrossEntropyFunction.apply(hidden, weight, bias, labels, opts, chunk, fw)

    def vocab_parallel(self, local_logits: Any, labels: Any, offset: int, num_classes: int, opts: Any, group: Any) -> Any:
        """The vocab-parallel loss over ``torch.distributed`` ``group`` (two all-reduces)."""
        _refuse_torch_func("smoothloss vocab_parallel_cross_entropy", local_logits, labels)
        if not _tracked(local_logits):
            return _vocab_parallel.vocab_parallel_forward(
                self, local_logits, labels, offset, num_classes, opts, *_collectives(group)
            )[0]
        return VocabParallelFunction.apply(local_logits, labels, offset, num_classes, opts, group, self)


def _refuse_torch_func(name: str, *tensors: Any) -> None:
    """A clear error for the first-order losses under torch.func (PyTorch's own names a
    missing ``setup_context``): their gradients are made chunk by chunk, or with
    collectives, by a backward that neither vmap nor forward mode can run."""
    if any(t is not None and _functorch_wrapped(t) for t in tensors):
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
        if _functorch_wrapped(t) or torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
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
    def forward(logits: Any, targets: Any, weight: Any, opts: _core.Options, fw: TorchFramework) -> Any:
        loss, stats, scale = fw.closed_forward(logits, targets, weight, opts)
        return loss, stats, _scale_tensor(scale, stats)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        logits, targets, weight, opts, fw = inputs
        loss, stats, scale = output
        ctx.opts, ctx.fw = opts, fw
        ctx.mark_non_differentiable(stats, scale)
        ctx.save_for_backward(logits, targets, weight, stats, scale, loss)
        ctx.save_for_forward(logits, targets, weight)

    @staticmethod
    def backward(ctx: Any, cotangent: Any, _stats: Any, _scale: Any) -> Any:
        logits, targets, weight, stats, scale, loss = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        fw, opts = ctx.fw, ctx.opts
        if torch.is_grad_enabled():  # create_graph: every statistic as a function of the inputs
            grads = _recomputed_grads(fw, logits, targets, weight, opts, cotangent, needs)
        elif any(_functorch_wrapped(t) for t in (cotangent, logits, targets, weight) if t is not None):
            # under vmap (batched gradients, jacrev): the native kernels write in place,
            # which vmap refuses where a batched operand meets an unbatched result
            with native_kernels(False):
                grads = _core.backward(fw, logits, targets, weight, opts, stats, scale, loss, cotangent, needs)
        else:
            grads = fw.closed_backward(logits, targets, weight, opts, stats, scale, loss, cotangent, needs)
        return (*grads, None, None)

    @staticmethod
    def jvp(ctx: Any, t_logits: Any, t_targets: Any, t_weight: Any, _opts: Any, _fw: Any) -> Any:
        logits, targets, weight = ctx.saved_tensors
        with native_kernels(False):
            _, tangent = _core.jvp(ctx.fw, logits, targets, weight, ctx.opts, (t_logits, t_targets, t_weight))
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
    def forward(ctx: Any, logits: Any, targets: Any, weight: Any, opts: _core.Options, fw: TorchFramework) -> Any:
        # the gradient: not a saved tensor (made here, never handed out, so never modified in place)
        loss, ctx.grad = _core.forward_and_grad(fw, logits, targets, weight, opts)  # (fw: never a compiled binding)
        ctx.opts, ctx.fw = opts, fw
        ctx.save_for_backward(logits, targets, weight)
        if _forward_ad_level() >= 0:  # a dual level is open: the jvp may be asked for
            ctx.save_for_forward(logits, targets, weight)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        if torch.is_grad_enabled() or _functorch_wrapped(cotangent):
            grads = _recomputed_grads(ctx.fw, *ctx.saved_tensors, ctx.opts, cotangent, (True, False, False))
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


_autograd_apply = super(torch.autograd.Function, CrossEntropyFunction).apply
_small_apply = super(torch.autograd.Function, _SmallCrossEntropyFunction).apply  # (old-style: no binding step)
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


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
    def forward(ctx: Any, logits: Any, targets: Any, weight: Any, opts: _core.Options, fw: Any) -> Any:
        flat = _Flat(logits, targets, weight, opts)
        loss, stats, scale, ctx.e = fw.closed_forward_kept(flat)  # (e: not a saved tensor, never handed out)
        if ctx.e is None:  # compiling failed: the eager kernels
            loss, stats, scale = FW.closed_forward(logits, targets, weight, opts)
        scale = _scale_tensor(scale, stats)
        flat.x = None  # (the backward reads the labels, weight and layout only)
        ctx.opts, ctx.fw, ctx.flat = opts, fw, flat
        ctx.save_for_backward(logits, targets, weight, stats, scale, loss)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        e, ctx.e = ctx.e, None  # the first backward takes e; a second one finds None
        if e is not None and not torch.is_grad_enabled() and not _functorch_wrapped(cotangent):
            _, _, _, stats, scale, _ = ctx.saved_tensors  # (checks that no input was changed in place)
            g = ctx.fw.grad_from_exp(ctx.flat, e, stats, scale, cotangent)
            if g is not None:
                return g, None, None, None, None
        return CrossEntropyFunction.backward(ctx, cotangent, None, None)


_exp_kept_apply = super(torch.autograd.Function, _ExpKeptCrossEntropyFunction).apply


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
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, fw: Any) -> Any:
        needs = tuple(ctx.needs_input_grad[:3])
        loss, stats, scale, grads = _linear.chunked_forward(fw, hidden, weight, bias, labels, opts, chunk, needs)
        ctx.opts, ctx.chunk, ctx.scale, ctx.fw = opts, chunk, scale, fw
        # not saved tensors: the first backward scales them in place and drops them
        ctx.grads = grads
        ctx.save_for_backward(hidden, weight, bias, labels, stats)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        hidden, weight, bias, labels, stats = ctx.saved_tensors
        batched = _functorch_wrapped(cotangent)  # is_grads_batched (gradcheck): vmap refuses in-place kernels
        # (no native_kernels context unless batched: Dynamo cannot trace ContextVar.set)
        with torch.no_grad(), native_kernels(False) if batched else contextlib.nullcontext():
            grads, ctx.grads = ctx.grads, None
            if grads is None:
                needs = tuple(ctx.needs_input_grad[:3])
                grads = _linear.chunked_backward(
                    ctx.fw, hidden, weight, bias, labels, ctx.opts, ctx.chunk, stats, ctx.scale, cotangent, needs
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


def _concat(arrays: Any, /, *, axis: int | None = 0) -> Any:
    if axis is None:
        return torch.cat([a.reshape(-1) for a in arrays])
    return torch.cat(list(arrays), dim=axis)


def _take_along_axis(compat: Any) -> Any:
    def take_along_axis(x: Any, indices: Any, /, *, axis: int = -1) -> Any:
        dim = axis % x.ndim
        same_off_axis = x.shape[:dim] == indices.shape[:dim] and x.shape[dim + 1:] == indices.shape[dim + 1:]
        if indices.ndim == x.ndim and same_off_axis:
            return torch.gather(x, dim, torch.where(indices < 0, indices + x.shape[dim], indices))
        return compat.take_along_axis(x, indices, axis=axis)  # broadcasting indices

    return take_along_axis


def _namespace() -> Any:
    """array-api-compat's torch namespace with ``moveaxis`` and ``concat`` as the ops they
    alias, ``torch.movedim`` and ``torch.cat``: vmap has no batching rule for
    ``aten::moveaxis.int`` (torch.func.vmap: the per-sample gradients of a loss whose
    classes are not last) nor for ``aten::concat`` (the legacy vmap of
    ``is_grads_batched``: gradcheck's batched gradients of the chunked loss). And
    ``take_along_axis`` as ``torch.gather`` where the shapes agree off the axis:
    ``torch.take_along_dim`` makes torch.compile(dynamic=True) specialize the batch size
    (a recompile per batch size). A copy: array-api-compat's own module is left as it is."""
    compat = array_api_compat.array_namespace(torch.empty(0))
    xp = types.ModuleType(compat.__name__, compat.__doc__)
    xp.__dict__.update({k: v for k, v in vars(compat).items() if k not in ("__name__", "__doc__")})
    xp.moveaxis = torch.movedim
    xp.concat = _concat
    xp.take_along_axis = _take_along_axis(compat)
    return xp


# Made once, when this module is imported: also when the first call to smoothloss comes
# inside a torch.compile region, where building a namespace module cannot be traced.
FW = TorchFramework(_namespace())


# ---------------------------------------------------------------------- compiled kernels
# Eager calls on at least this many logits run the compiled kernels under
# set_compile_mode("auto"): below it, a compiled call's fixed cost (guards, launch) is
# more than the passes it saves. Measured by ``python -m smoothloss bench`` (its
# compiled-vs-eager table; see docs/benchmarks.md): on 2 CPU threads, compiled ÷ eager
# was 1.02 at 256×1000, 0.87 at 512×1000, 0.87 at 2048×256, 0.71 at 1024×1000 and 0.52
# at 4096×1000 (parallel compiled loops, exp2 for exp, one exp per logit where the
# backward starts from the forward's exponentials, and the eager kernels' composition
# for short rows).
COMPILE_THRESHOLD = int(os.environ.get("SMOOTHLOSS_COMPILE_THRESHOLD", 1 << 18))

# Eager calls on at most this many logits make the gradient in the forward
# (:class:`_SmallCrossEntropyFunction`): where the per-call work outweighs the passes, and
# keeping a gradient-sized array from the forward to the backward costs at most 256 KiB
# in float32.
SMALL_CALL = 1 << 16


_LOG2_E = 1.4426950408889634


class _GraphKernels(Kernels):
    """The Array-API composition, but for two kernels Inductor compiles slower than it could:

    * the label term: Inductor fuses the composition's ``where(classes == label, g + v,
      g)`` into the gradient's loop as an integer compare and blend per logit, where an
      out-of-place ``scatter_add`` is a second loop over the rows writing into the same
      buffer (measured, 2 threads, 4096×1000: the compiled backward 2.6 → 1.7 ms);
    * float32 ``exp`` on the CPU, which Inductor's C++ loops take from SLEEF's 1-ulp
      ``expf`` at about twice the time of torch's own ``exp`` (4096×1000: 1.3 against
      0.75 ms); ``exp2(z·log2 e)`` runs at 1.0 ms. Rounding z·log2 e adds a relative error
      of about |z|·2⁻²⁴ to exp(z), z = x - max: at most 1.2e-6 for the terms above e⁻²⁰ of
      the largest, which are all that move a float32 sum or probability. Float64 (its
      rounding is 2⁻⁵³) and CUDA (Triton's exp is already exp2 of a product) keep ``exp``.
    """

    def exp(self, z: Any) -> Any:
        if z.dtype == torch.float32 and z.device.type == "cpu":
            return torch.exp2(z * _LOG2_E)
        return torch.exp(z)

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        return g.scatter_add(-1, labels.unsqueeze(-1), _label_values(g, labels, values))  # (out of place: traced)


class _ReferenceBinding(TorchFramework):
    """The binding whose kernels are the graph's, whatever the kernels switch: the
    Array-API composition (with the label term as a scatter) that Inductor fuses into
    one or two loops over the logits."""

    native_kernel_class = _GraphKernels

    @property
    def kernels(self) -> Kernels:
        return self.native


_REFERENCE = _ReferenceBinding(FW.xp)

# The options that are graph inputs, not constants: one compiled graph serves every
# value (a zero and a non-zero value still make two graphs, as the terms differ).
_FLOAT_OPTIONS = ("label_smoothing", "z_loss")
# ignore_index=None as a value no (checked) label equals, so that it is no graph of its own
_NO_LABEL = -(2**63)


def _joined(shape: _core.Options, values: tuple[Any, ...]) -> _core.Options:
    """The options of a call from its graph constants and its graph-input values (None:
    the constant holds the value)."""
    eps, z = (shape_value if value is None else value for shape_value, value in zip(
        (shape.label_smoothing, shape.z_loss), values))
    return _core.Options(
        axis=-1, label_smoothing=eps, convention=shape.convention, ignore_index=shape.ignore_index,
        reduction=shape.reduction, z_loss=z, softcap=shape.softcap, kl=shape.kl,
    )


def _forward_graph(logits: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...]) -> Any:
    return _core.forward(_REFERENCE, logits, targets, weight, _joined(shape, values))


def _backward_graph(
    logits: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...], *rest: Any
) -> Any:
    return _core.backward(_REFERENCE, logits, targets, weight, _joined(shape, values), *rest)


def _forward_kept_graph(logits: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...]) -> Any:
    """:func:`_forward_graph`, and ``e = exp(x - m)`` of the (N, K) logits: the one its
    row sums add up (so Inductor writes it from the same loop, with no second exp)."""
    keep: list[Any] = []
    loss, stats, scale = _core.forward(_REFERENCE, logits, targets, weight, _joined(shape, values), keep=keep)
    return loss, stats, scale, keep[0]


def _exp_grad_graph(
    e: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...], stats: Any, scale: Any,
    cotangent: Any,
) -> Any:
    """The logits' gradient made in e's place, but for the label term, returned as
    ``(labels, at_label)`` (a scatter into e inside the graph would make Inductor copy e)."""
    factor, shift, labels, at_label = _core.exp_grad_terms(
        _REFERENCE, e, targets, weight, _joined(shape, values), stats, scale, cotangent
    )
    e.mul_(factor).sub_(shift)
    return labels, at_label


@functools.lru_cache(maxsize=256)
def _graph_options(opts: _core.Options, integer: bool) -> tuple[_core.Options, tuple[Any, ...]]:
    """A call's options split into the graph's constants and its float inputs (cached:
    two calls a step would otherwise rebuild the same dataclass)."""
    ignore = opts.ignore_index if opts.ignore_index is not None or not integer else _NO_LABEL
    # kl takes x·log x of the smoothed probabilities in Python: a graph input there would
    # be specialised anyway, and Dynamo would then specialise that input (by its
    # symbolic name, for the rest of the process) in every later graph too
    inputs = ("z_loss",) if opts.kl else _FLOAT_OPTIONS
    shape = replace(opts, axis=-1, ignore_index=ignore, **{k: 0.0 for k in inputs})
    return shape, tuple(getattr(opts, k) if k in inputs else None for k in _FLOAT_OPTIONS)


class _Flat:
    """A call in the compiled graphs' one layout: logits (N, K), targets (N,) or (N, K),
    an integer ``ignore_index`` always. So the rank, the class axis and the presence of
    an ignore_index make no graphs of their own; a weight does (a ones vector in its
    place would cost a load per logit and a gather per row in every unweighted call:
    measured, 2 threads, 4096×1000, 10% of the compiled forward+backward). Moving a
    class axis that is not last copies the logits; flattening the leading axes of
    class-last logits does not."""

    def __init__(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> None:
        self.axis = opts.axis % logits.ndim
        self.last = self.axis == logits.ndim - 1
        x = logits if self.last else logits.movedim(self.axis, -1)
        self.positions, K = tuple(x.shape[:-1]), x.shape[-1]
        self.x = x.reshape(-1, K)
        self.integer = not targets.is_floating_point()
        if self.integer:
            self.t = targets.reshape(-1)
        else:
            self.t = (targets if self.last else targets.movedim(self.axis, -1)).reshape(-1, K)
        self.w = weight
        self.shape, self.values = _graph_options(opts, self.integer)
        self.none = opts.reduction == "none"

    def rows(self, a: Any) -> Any:
        """A per-position array (positions, ...) as (N, ...)."""
        return a.reshape(-1, *a.shape[len(self.positions):])

    def positioned(self, a: Any) -> Any:
        """A per-row array (N, ...) back to (positions, ...)."""
        return a.reshape(*self.positions, *a.shape[1:])

    def outputs(self, loss: Any, stats: Any) -> tuple[Any, Any]:
        """A graph's flat loss ("none": per row) and statistics back to (positions, ...)."""
        return (self.positioned(loss) if self.none else loss), self.positioned(stats)

    def cotangent(self, cot: Any) -> Any:
        """A loss's cotangent as the graphs take it: per row for "none", else as it is."""
        return self.rows(cot) if self.none and isinstance(cot, torch.Tensor) and cot.ndim else cot

    def layout(self, g: Any) -> Any:
        """An (N, K) gradient back to the caller's layout."""
        g = g.reshape(*self.positions, g.shape[-1])
        return g if self.last else g.movedim(-1, self.axis)


class CompiledBinding(TorchFramework):
    """The dense loss's forward and closed-form backward, each compiled once by
    ``torch.compile`` (Inductor: C++/OpenMP loops on the CPU, Triton on CUDA) from the
    core's own Array-API composition, with dynamic shapes: every batch size and class
    count of one dtype and option set share one graph, and the smoothing and z-loss
    values are graph inputs. Where compiling fails (no C++ compiler, no Triton, an
    unsupported platform) it warns once per process and the eager kernels run."""

    compiled = True

    def __init__(self, xp: Any) -> None:
        super().__init__(xp)
        self.graphs: dict[str, Any] = {}
        self.broken: str | None = None
        self.calls = 0  # compiled calls made (the tests read it to know which path ran)

    def _graph(self, name: str, fn: Any) -> Any:
        graph = self.graphs.get(name)
        if graph is None:
            # dynamic_threads: Inductor's C++ loops parallel over rows whatever the thread
            # count, and the sizes, of the call that compiled them (with a fixed count,
            # a graph compiled, or cached on disk, by a one-thread process runs serially
            # in every later process: measured, 4096×1000 took 1.6 times as long)
            # (each option set and dtype is a graph of its own: more than Dynamo's default 8)
            graph = self.graphs[name] = torch.compile(
                fn, dynamic=True, fullgraph=True, recompile_limit=256, options={"cpp.dynamic_threads": True}
            )
        return graph

    def _run(self, name: str, fn: Any, *args: Any) -> Any:
        """The compiled ``fn`` of ``args``, or None where compiling failed (then the
        caller runs the eager kernels)."""
        if self.broken is None:
            try:
                out = self._graph(name, fn)(*args)
                self.calls += 1
                return out
            except torch.OutOfMemoryError:
                raise  # the device is full: not a compiler failure, and eager kernels need no less
            except Exception as e:  # noqa: BLE001 (whatever the compiler raised: fall back, once)
                # (Dynamo wraps the backend's error)
                self.broken = compile_failed("torch.compile", getattr(e, "inner_exception", None) or e)
        return None

    def closed_forward(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        f = _Flat(logits, targets, weight, opts)
        out = self._run("forward", _forward_graph, f.x, f.t, f.w, f.shape, f.values)
        if out is None:
            return FW.closed_forward(logits, targets, weight, opts)
        loss, stats, scale = out
        return (*f.outputs(loss, stats), scale)

    def keeps_exp(self, logits: Any, targets: Any, opts: _core.Options) -> bool:
        """Whether a call's logits' gradient can be made from the forward's exponentials
        (:meth:`closed_forward_kept`, :meth:`grad_from_exp`): integer labels, logits that
        are their own compute dtype (so e is no larger than they are), no softcap."""
        return (not targets.is_floating_point() and opts.softcap is None
                and logits.dtype in (torch.float32, torch.float64))

    def closed_forward_kept(self, f: _Flat) -> Any:
        """``(loss, stats, scale, e)``: the compiled forward of a flattened call, and
        ``e = exp(x - m)`` of its (N, K) logits; Nones where compiling failed."""
        out = self._run("forward_kept", _forward_kept_graph, f.x, f.t, f.w, f.shape, f.values)
        if out is None:
            return None, None, None, None
        loss, stats, scale, e = out
        return (*f.outputs(loss, stats), scale, e)

    def grad_from_exp(self, f: _Flat, e: Any, stats: Any, scale: Any, cotangent: Any) -> Any:
        """The logits' gradient of a flattened call, made in the place of the forward's
        ``e`` (:meth:`closed_forward_kept`), in the caller's layout; None where compiling
        failed (e is then unchanged)."""
        out = self._run(
            "backward_from_exp", _exp_grad_graph, e, f.t, f.w, f.shape, f.values, f.rows(stats), scale,
            f.cotangent(cotangent),
        )
        if out is None:
            return None
        labels, at_label = out
        # the label term out of the graph: a scatter into e there would make Inductor copy e
        e.scatter_add_(-1, labels.unsqueeze(-1), _label_values(e, labels, at_label))
        return f.layout(e)

    def closed_forward_and_grad(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        if self.broken is None and self.keeps_exp(logits, targets, opts):
            f = _Flat(logits, targets, weight, opts)
            loss, stats, scale, e = self.closed_forward_kept(f)
            if e is not None:
                one = torch.ones((), dtype=e.dtype, device=e.device)  # (a tensor: the same graph as a backward's)
                g = self.grad_from_exp(f, e, stats, scale, one)
                if g is not None:
                    return loss, g
        return super().closed_forward_and_grad(logits, targets, weight, opts)

    def closed_backward(
        self, logits: Any, targets: Any, weight: Any, opts: _core.Options,
        stats: Any, scale: Any, loss: Any, cotangent: Any, needs: tuple[bool, bool, bool] = (True, False, False),
    ) -> Any:
        f = _Flat(logits, targets, weight, opts)
        flat_loss = loss if loss is None or not f.none else f.rows(loss)  # (the chunked linear loss's step has none)
        out = self._run(
            "backward", _backward_graph, f.x, f.t, f.w, f.shape, f.values, f.rows(stats), scale, flat_loss,
            f.cotangent(cotangent), needs,
        )
        if out is None:
            return FW.closed_backward(logits, targets, weight, opts, stats, scale, loss, cotangent, needs)
        g_logits, g_targets, g_weight = out
        return (
            None if g_logits is None else f.layout(g_logits),
            None if g_targets is None else f.layout(g_targets),
            g_weight,
        )


COMPILED = CompiledBinding(FW.xp)


def _compiles(like: Any, numel: Any) -> bool:
    """Whether an eager call on ``numel`` logits of ``like``'s kind (outside torch.compile)
    runs the compiled kernels."""
    if COMPILED.broken is not None or torch.compiler.is_compiling():
        return False  # in a caller's compiled region: traced inline (no guard on the size or the mode)
    if not compile_wanted(numel, COMPILE_THRESHOLD):
        return False
    if type(like) not in _PLAIN or like.device.type not in ("cpu", "cuda"):
        return False  # meta, fake and subclass tensors: the eager path traces them
    return not (torch.jit.is_tracing() or torch.jit.is_scripting())


def binding() -> TorchFramework:
    return FW
