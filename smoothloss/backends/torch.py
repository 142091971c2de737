"""The PyTorch binding's facts and kernels: the namespace, value checks that respect
fake, meta and functorch tensors, and the native (fused, in-place) kernels.

A leaf: it imports no part of the algorithm. The compiled kernels are
:mod:`smoothloss.backends.torch_compiled`; the ``torch.autograd.Function``\\ s and the
choice of path are :mod:`smoothloss.backends.torch_autodiff`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import array_api_compat
import torch

from smoothloss.backends._base import (
    Framework, Kernels, before_first_block, native_kernels_everywhere, use_native_kernels,
)

__all__ = ["FW", "TorchFramework", "TorchKernels", "binding", "functorch_wrapped", "plain", "row_kernels"]


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


# Logits in a call whose ops cost more to call than to run (an op's call costs more
# than a pass over this many float32 logits)
_TINY = 4096


def row_kernels(x: Any) -> bool:
    """Whether torch's fused softmax kernels serve rows of ``x``'s length (else: the
    elementwise composition). On the CPU they are slow on many short rows whose length is
    no multiple of the vector width (many times slower than the composition), and no
    faster up to rows of about
    a thousand classes; on tiny inputs, where each op's call costs more than its loop,
    fewer ops win."""
    if not x.is_cpu:
        return True
    K = x.shape[-1]
    return K >= 1024 or x.numel() <= _TINY


class TorchKernels(Kernels):
    """Fused and in-place kernels: fewer B×K passes and allocations than the composition."""

    overwrites = True

    def log_softmax_stats(
        self, x: Any, weight: Any = None, sum_w: Any = None, labels: Any = None, *, stats: bool = True,
        keep: list[Any] | None = None, scratch: bool = False,
    ) -> tuple[Any, Any, Any, Any]:
        y = None if labels is None else labels.unsqueeze(-1)
        if keep is None and row_kernels(x):
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
        # the composition, in one temporary: z = x - m, its sums, then exp in place (with
        # scratch, in x's place: no temporary). (No result here is changed in place after
        # an op whose gradient reads it: a traced program, such as torch.export's,
        # differentiates these kernels.)
        z = x.sub_(m.unsqueeze(-1)) if scratch else x - m.unsqueeze(-1)
        sum_z = None if sum_w is None else (z.sum(-1) if weight is None else z @ weight)
        z_y = None if y is None else z.gather(-1, y).squeeze(-1)
        e = z.exp() if z.requires_grad else z.exp_()  # (in place only where autograd does not record)
        if keep is not None:
            keep.append(e)
        lse_rel = e.sum(-1).log()  # (out of place: log's gradient reads its input)
        sum_nll = None if sum_w is None else lse_rel * sum_w - sum_z
        return m, lse_rel, sum_nll, None if y is None else lse_rel - z_y

    def softmax_affine(self, x: Any, stats: Any, scale: Any, shift: Any, *, row_lse: bool = True) -> Any:
        m, lse_rel = stats
        if m is None:  # log_softmax_stats(x, stats=False) left x's log-probabilities: exp in place
            g = lse_rel.exp() if lse_rel.requires_grad else lse_rel.exp_()  # (log_softmax's gradient reads them)
        elif not row_lse or not row_kernels(x):  # (row_lse=False: a shard's global statistics)
            g = torch.sub(x, m.unsqueeze(-1)).sub_(lse_rel.unsqueeze(-1)).exp_()
        else:
            g = torch.softmax(x, dim=-1)
        return _scaled(g, scale, shift)

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        if isinstance(values, float):  # one value for every position: no source tensor to make
            return g.scatter_(-1, labels.unsqueeze(-1), values, reduce="add")
        return g.scatter_add_(-1, labels.unsqueeze(-1), _label_values(g, labels, values))

    def affine(self, g: Any, scale: Any, shift: Any) -> Any:
        return _scaled(g, scale, shift)

    def add_scaled(self, a: Any, b: Any, c: Any) -> Any:
        # one op: a Python float as alpha costs nothing, as a multiplier it becomes a scalar
        # tensor of its own (a cost per op that shows on small inputs)
        return torch.add(a, b, alpha=c) if isinstance(c, float) else a + b * c

    def logits(self, h: Any, weight: Any) -> Any:
        if h.is_cpu:
            # (V, C) in memory, seen as (C, V): on the CPU this product, and the gradient's
            # two from that layout (g.T @ h contiguous, g @ weight), run faster than from
            # a (C, V) buffer (the ratio is in docs/transforms.md's path table)
            return torch.matmul(weight, h.T).T
        return torch.matmul(h, weight.T)

    def block_max(self, z: Any, block: int) -> Any:
        if z.T.is_contiguous():  # logits' CPU layout: each block is `block` contiguous rows of z.T (30x faster)
            return z.T.reshape(z.shape[1] // block, block, z.shape[0]).amax(1).T
        return z.reshape(z.shape[0], z.shape[1] // block, block).amax(-1)

    def small_chunks(self, like: Any) -> bool:
        # measured on the CPU only; on a GPU the larger chunk's products are left as they were
        return like.is_cpu

    def add_matmul(self, acc: Any, a: Any, b: Any) -> Any:
        # in place, the product in acc's dtype: 16-bit operands are widened (a C×V and a
        # C×H copy), never the V×H product (two V×H temporaries out of place)
        a_t = a.T if a.dtype == acc.dtype else a.T.to(acc.dtype)
        return acc.addmm_(a_t, b if b.dtype == acc.dtype else b.to(acc.dtype))


def functorch_wrapped(x: Any) -> bool:
    """Whether ``x`` is a torch.func wrapper (vmap's batched, grad's or jvp's tracking
    tensor) or a legacy batched tensor (``torch.autograd.grad(..., is_grads_batched=True)``,
    gradcheck's batched-gradient check).

    Always False while Dynamo traces: it cannot call these C functions, and the tensors
    it traces are its own proxies, never functorch wrappers."""
    return not torch.compiler.is_compiling() and _wrapped(x)


def _wrapped(x: Any) -> bool:
    """:func:`functorch_wrapped` outside Dynamo."""
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

def _mark_switch_constant() -> None:
    """Dynamo cannot trace ContextVar.get: while compiling inside a native_kernels block,
    the switch is read as a constant at trace time (a compiled function keeps the choice
    it was traced with). Marking it imports torch._dynamo, so it is done only once a
    block opens, or now where torch._dynamo is loaded already; outside every block the
    native kernels are used without reading the switch."""
    torch.compiler.assume_constant_result(use_native_kernels)


if "torch._dynamo" in sys.modules:
    _mark_switch_constant()
else:
    before_first_block(_mark_switch_constant)


class TorchFramework(Framework):
    name = "torch"
    native_kernel_class = TorchKernels

    @property
    def kernels(self) -> Kernels:
        if torch.compiler.is_compiling():
            return self.native if native_kernels_everywhere() or use_native_kernels() else self.reference
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

    def checks_at_run_time(self, x: Any) -> bool:
        # inside torch.compile, and on eager tensors of a device (a check without a sync)
        return torch.compiler.is_compiling() or (type(x) in _PLAIN and not x.is_meta and not _wrapped(x))

    def check(self, ok: Any, message: str, lo: Any, hi: Any) -> None:
        # A device-side assert, as Inductor's own bounds check on F.cross_entropy's
        # gather (a RuntimeError on the CPU, a device assert on CUDA): its message is
        # fixed when the graph is built, so it cannot name the values.
        torch._assert_async(ok.all(), message)

    def detached(self, value: Any) -> Any:
        return value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)

    def read_scalar(self, value: Any) -> float | None:
        if not self.is_concrete(value) or value.device.type != "cpu":
            return None  # (reading a device's tensor would wait for it at every step)
        return float(value.detach())


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


def plain(x: Any) -> bool:
    """Whether ``x`` is a plain tensor or parameter (no meta, fake or subclass tensor)."""
    return type(x) in _PLAIN


def binding() -> TorchFramework:
    return FW
