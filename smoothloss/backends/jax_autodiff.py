"""The JAX autodiff layer: the closed-form derivatives, the chunk loop as a ``lax.scan``,
and :class:`JaxLosses`, the entry points.

The dense loss is a ``jax.custom_jvp`` whose tangent rule contracts the closed-form
gradient with the tangents, so forward mode (``jvp``, ``jacfwd``, ``linearize``,
``hessian``) and reverse mode (``grad``, ``vjp``, ``jacrev``) both work and compose
with ``vmap``, ``checkpoint`` and ``jit``; under ``grad`` the rule runs once and its
transpose is a multiplication by the saved gradient. Inputs sharded over a mesh with
Explicit axes (``jax.make_mesh``'s default) run it with those axes made Auto
(``jax.sharding.auto_axes``), as inputs on Auto meshes do. The chunked linear loss is a
``custom_jvp`` for ``"mean"``/``"sum"`` (the gradients at cotangent 1 come from the
same pass over the chunks as the loss) and a ``custom_vjp`` for ``"none"`` (reverse
mode, and forward mode over it as in ``hessian``; ``jvp``, ``jacfwd`` and ``linearize``
of it raise: a per-row tangent would need the N×V gradient). The vocab-parallel loss is
a ``custom_vjp`` inside ``shard_map``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Hashable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from smoothloss import _core, _linear, _vocab_parallel
from smoothloss._formulas import compute_dtype
from smoothloss.backends._autodiff import Closed, Losses, refuse_class_weight
from smoothloss.backends.jax import FW

__all__ = ["LOSSES", "JaxLosses"]


class JaxLosses(Losses):
    """JAX's entry points: one path each (XLA compiles whatever ``jit`` the caller uses)."""

    def cross_entropy(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        mesh = _explicit_mesh(logits, targets, weight)
        if mesh is None:
            return _cross_entropy(logits, targets, weight, opts)
        return _in_auto_axes(mesh, lambda x, t, w: _cross_entropy(x, t, w, opts), logits, targets, weight, opts)

    def cross_entropy_and_grad(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> tuple[Any, Any]:
        mesh = _explicit_mesh(logits, targets, weight)
        closed_form = partial(Losses.cross_entropy_and_grad, self, opts=opts)
        if mesh is None:
            return closed_form(logits, targets, weight)
        return _in_auto_axes(mesh, closed_form, logits, targets, weight, opts, with_grad=True)

    def linear_cross_entropy(
        self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, class_weight: Any = None
    ) -> Any:
        refuse_class_weight(class_weight)
        fn = _linear_none if opts.reduction == "none" else _linear_reduced
        return fn(hidden, weight, bias, labels, opts, chunk, RUN)

    def vocab_parallel(self, local_logits: Any, labels: Any, axis_name: Hashable, num_classes: int, opts: Any) -> Any:
        """The vocab-parallel loss inside ``shard_map`` over ``axis_name``."""
        return _vocab_parallel_loss(local_logits, labels, axis_name, num_classes, opts)

    def vocab_parallel_linear(
        self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, axis_name: Hashable,
        num_classes: int,
    ) -> Any:
        """The chunked linear loss over this shard's rows ``weight`` of a projection sharded
        by class along ``axis_name``, inside ``shard_map``."""
        run = _vocab_parallel.Sharded(RUN, partial(_offset, axis_name=axis_name), num_classes, *_collectives(axis_name))
        fn = _linear_none if opts.reduction == "none" else _linear_reduced
        return fn(hidden, weight, bias, labels, opts, chunk, run)


def _tangent(t: Any, primal: Any) -> Any:
    """A tangent, or None where there is none (symbolic zeros, integer inputs)."""
    if primal is None or isinstance(t, SymbolicZero) or not jnp.issubdtype(primal.dtype, jnp.inexact):
        return None
    return t


# ----------------------------------------------------------------------------- dense
@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _cross_entropy(logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
    return _core.forward(FW, logits, targets, weight, opts)[0]


def _cross_entropy_jvp(opts: _core.Options, primals: Any, tangents: Any) -> Any:
    tangents = tuple(_tangent(t, p) for t, p in zip(tangents, primals))
    return _core.jvp(FW, *primals, opts, tangents)


_cross_entropy.defjvp(_cross_entropy_jvp, symbolic_zeros=True)


def _explicit_mesh(*arrays: Any) -> Any:
    """The abstract mesh of the first array sharded in Explicit mode (``jax.make_mesh``'s
    default axis type), or None. Such arrays carry their sharding in their type, and
    JAX then refuses a gather along a sharded axis (the label's logit) without an
    output sharding."""
    typeof = getattr(jax, "typeof", None)
    if typeof is None:  # JAX before Explicit sharding: nothing to do
        return None
    for a in arrays:
        if a is None:
            continue
        mesh = getattr(getattr(typeof(a), "sharding", None), "mesh", None)
        if mesh is not None and getattr(mesh, "explicit_axes", ()):
            return mesh
    return None


def _in_auto_axes(
    mesh: Any, fn: Any, logits: Any, targets: Any, weight: Any, opts: _core.Options, with_grad: bool = False
) -> Any:
    """``fn(logits, targets, weight)`` (the dense loss, or the loss and its closed-form
    gradient) with the mesh's Explicit axes made Auto (``jax.sharding.auto_axes``): XLA's
    partitioner places the collectives, as for Auto meshes. The loss comes back
    replicated (mean, sum) or sharded as the logits' non-class axes (``"none"``); a
    gradient comes back sharded as the logits, and autodiff's gradients keep the inputs'
    shardings (``reshard`` is linear)."""
    spec = tuple(jax.typeof(logits).sharding.spec)
    spec += (None,) * (logits.ndim - len(spec))
    out = jax.sharding.PartitionSpec()
    if opts.reduction == "none":
        out = jax.sharding.PartitionSpec(*(s for i, s in enumerate(spec) if i != opts.axis))
    if with_grad:
        out = (out, jax.sharding.PartitionSpec(*spec))
    fn = jax.sharding.auto_axes(fn, axes=tuple(mesh.explicit_axes), out_sharding=out)
    with jax.sharding.use_abstract_mesh(mesh):
        return fn(logits, targets, weight)


# ----------------------------------------------------------------------------- linear
@partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _linear_reduced(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, run: Any) -> Any:
    return _linear.chunked_forward(run, hidden, weight, bias, labels, opts, chunk)[0]


def _linear_reduced_jvp(opts: Any, chunk: int, run: Any, primals: Any, tangents: Any) -> Any:
    hidden, weight, bias, labels = primals
    tangents = tuple(_tangent(t, p) for t, p in zip(tangents[:3], primals[:3]))
    needs = tuple(t is not None for t in tangents)
    loss, _, _, grads = _linear.chunked_forward(run, hidden, weight, bias, labels, opts, chunk, needs)
    out = own = jnp.zeros_like(loss)  # own: the weight's and bias's terms
    for k, (g, t) in enumerate(zip(grads, tangents)):
        if g is not None and t is not None:
            term = jnp.sum(g * t.astype(g.dtype)).astype(loss.dtype)
            out, own = (out + term, own) if k == 0 else (out, own + term)
    all_sum = getattr(run, "all_sum", None)
    # sharded by class (inside shard_map): d_hidden is already the sum over the shards;
    # the weight's and bias's terms are each shard's own rows, summed here
    return loss, out + (own if all_sum is None else all_sum(own))


_linear_reduced.defjvp(_linear_reduced_jvp, symbolic_zeros=True)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _linear_none(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, run: Any) -> Any:
    return _linear.chunked_forward(run, hidden, weight, bias, labels, opts, chunk)[0]


def _linear_none_fwd(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Any, chunk: int, run: Any) -> Any:
    loss, stats, scale, _ = _linear.chunked_forward(run, hidden, weight, bias, labels, opts, chunk)
    return loss, (hidden, weight, bias, labels, stats)


def _linear_none_bwd(opts: Any, chunk: int, run: Any, residuals: Any, cotangent: Any) -> Any:
    hidden, weight, bias, labels, stats = residuals
    return (*_linear.chunked_backward(run, hidden, weight, bias, labels, opts, chunk, stats, 1.0, cotangent), None)


_linear_none.defvjp(_linear_none_fwd, _linear_none_bwd)


def _scan_loop(
    run: Any, step: Any, hidden: Any, weight: Any, bias: Any, labels: Any, row_opts: Any, chunk: int,
    stats: Any, scale: Any, cotangent: Any, needs: tuple[bool, bool, bool],
) -> tuple[Any, Any, Any, Any, Any]:
    """The chunk loop as a ``jax.lax.scan`` over the full chunks, then the shorter last
    chunk directly. A Python loop unrolled under jit leaves XLA free to schedule every
    chunk's logits at once (it did: more memory than the unchunked path); a scan runs
    one chunk at a time, with the weight and bias gradients as its carry, and compiles
    one chunk instead of N/chunk."""
    acc = compute_dtype(run.fw.xp, hidden.dtype)
    n = int(hidden.shape[0])
    full, rest = divmod(n, chunk)
    per_row = getattr(cotangent, "ndim", 0) > 0
    forward = stats is None

    def blocks(a: Any) -> Any:  # the first full·chunk rows as (full, chunk, ...)
        return None if a is None else a[: full * chunk].reshape(full, chunk, *a.shape[1:])

    def body(carry: Any, xs: Any) -> Any:
        h, y, stats_c, cot = xs
        loss_c, stats_c, dh_c, d_w, d_b = step(
            run, h, y, weight, bias, row_opts, stats_c, scale, cot if per_row else cotangent, needs, *carry
        )
        return (d_w, d_b), (loss_c, stats_c, dh_c)

    carry: Any = (None, None)
    outs: list[Any] = []
    if full:
        carry = (  # zeros_like: the carry has the weight's and bias's types (a shard_map's varying axes)
            jnp.zeros_like(weight, dtype=acc) if needs[1] else None,
            jnp.zeros_like(bias, dtype=acc) if needs[2] else None,
        )
        xs = (blocks(hidden), blocks(labels), None if forward else blocks(stats), blocks(cotangent) if per_row else None)
        carry, stacked = jax.lax.scan(body, carry, xs)
        outs.append(tuple(None if a is None else a.reshape(full * chunk, *a.shape[2:]) for a in stacked))
    if rest or not full:
        tail = slice(full * chunk, n)
        carry, last = body(carry, (
            hidden[tail], labels[tail], None if forward else stats[tail], cotangent[tail] if per_row else None,
        ))
        outs.append(last)

    def joined(k: int) -> Any:
        parts = [o[k] for o in outs]
        return None if parts[0] is None else (parts[0] if len(parts) == 1 else jnp.concatenate(parts))

    return (
        joined(0) if forward else None,
        joined(1) if forward else stats,
        joined(2) if needs[0] else None,
        *carry,
    )


# ----------------------------------------------------------------------------- vocab parallel
def _offset(local_logits: Any, axis_name: Hashable) -> Any:
    return jax.lax.axis_index(axis_name) * local_logits.shape[-1]


def _collectives(axis_name: Hashable) -> tuple[Any, Any]:
    return (lambda a: jax.lax.pmax(a, axis_name)), (lambda a: jax.lax.psum(a, axis_name))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _vocab_parallel_loss(local_logits: Any, labels: Any, axis_name: Hashable, num_classes: int, opts: Any) -> Any:
    return _vocab_parallel_fwd(local_logits, labels, axis_name, num_classes, opts)[0]


def _vocab_parallel_fwd(local_logits: Any, labels: Any, axis_name: Hashable, num_classes: int, opts: Any) -> Any:
    loss, stats, scale = _vocab_parallel.vocab_parallel_forward(
        FW, local_logits, labels, _offset(local_logits, axis_name), num_classes, opts, *_collectives(axis_name)
    )
    return loss, (local_logits, labels, stats, jnp.asarray(scale, dtype=stats.dtype))


def _vocab_parallel_bwd(axis_name: Hashable, num_classes: int, opts: Any, residuals: Any, cotangent: Any) -> Any:
    local_logits, labels, stats, scale = residuals
    g = _vocab_parallel.vocab_parallel_backward(
        FW, local_logits, labels, _offset(local_logits, axis_name), num_classes, opts, stats, scale, cotangent
    )
    return g, None


_vocab_parallel_loss.defvjp(_vocab_parallel_fwd, _vocab_parallel_bwd)


RUN = Closed(FW, loop=_scan_loop)
LOSSES = JaxLosses(FW, RUN)
