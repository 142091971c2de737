"""Chunked linear cross-entropy: the loss of a final projection without its N×V logits.

For hidden states h (N, H), a projection W (V, H) and an optional bias b (V,),
``linear_cross_entropy`` equals ``cross_entropy(h @ W.T + b, labels, ...)`` but walks
the rows in chunks of ``chunk_size``: a chunk's logits ``z = h_c @ W.T + b`` (C×V) are
made, reduced by the core's :func:`~smoothloss._core.forward` to the per-row loss and
log-sum-exp (O(N) kept), given the core's closed form ``g = dℓ/dz``
(:func:`~smoothloss._core.backward`) where a gradient is wanted, and dropped:

``dh_c = g @ W``,  ``dW += g.T @ h_c``,  ``db += Σ_rows g``.

For ``"mean"`` and ``"sum"`` this happens in the forward pass, at cotangent 1, and the
backward only scales the three gradients by the incoming cotangent: each chunk's logits
are made once per training step. For ``"none"`` (one cotangent per row) the backward
makes each chunk's logits again from the saved per-row log-sum-exp.

No loss formula lives here: smoothing, ignore_index, z_loss and softcap are the core's.
Every function takes ``run``, the closed form to apply to each chunk
(:class:`smoothloss.backends._autodiff.Closed`: ``run.fw``, the binding's facts and
kernels; ``run.forward``/``run.backward``, the core's, or a compiled version of them;
``run.loop``, the loop over the chunks). Each framework's autodiff layer registers the
backward as the loss's gradient; NumPy and array-api-strict use
``linear_cross_entropy_and_grad``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Any

from smoothloss import _filter
from smoothloss import _validation as V
from smoothloss._core import Options, validate
from smoothloss._formulas import compute_dtype, is_zero, mean_scale, soft_cap
from smoothloss._vocab_parallel import options as vocab_parallel_options

__all__ = [
    "CHUNK_BYTES", "CHUNK_BYTES_COPYING", "MIN_CHUNK_ROWS", "chunk_step", "chunked_backward", "chunked_forward",
    "default_chunk", "prepare", "python_loop", "row_statistics", "with_class_weight",
]

#: The default chunk holds about this many bytes of logits where each chunk's gradient
#: is made in its logits' place (the kernels' ``small_chunks``: PyTorch's on the CPU, one
#: C×V buffer a chunk, so the chunk is the whole memory beyond the gradients) ...
CHUNK_BYTES = 16 << 20
#: ... and this many where a chunk holds its logits and their gradient at once: there a
#: compiled loop (XLA's scan, TensorFlow's while_loop) runs fewer, larger chunks faster.
CHUNK_BYTES_COPYING = 64 << 20


#: ... and at least this many rows: thinner chunks run the products below their speed (at
#: V=128256 on the torch CPU, 32-row chunks took 1.29x the 64-row ones' time: docs/distributed.md).
#: 64 rows of logits are never more than the weight's gradient where H >= 64.
MIN_CHUNK_ROWS = 64


def default_chunk(num_classes: int, itemsize: int, small: bool) -> int:
    """The default rows per chunk for ``num_classes`` logits of ``itemsize`` bytes each:
    ``CHUNK_BYTES`` of them where ``small`` (the kernels' ``small_chunks``), else
    ``CHUNK_BYTES_COPYING``; at least ``MIN_CHUNK_ROWS``."""
    return max(MIN_CHUNK_ROWS, (CHUNK_BYTES if small else CHUNK_BYTES_COPYING) // (num_classes * itemsize))


def _concat(xp: Any, parts: list[Any]) -> Any:
    """``xp.concat(parts, axis=0)``; one part is returned as it is."""
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """Row ranges of the chunks; one empty chunk when there are no rows."""
    if n == 0:
        return [(0, 0)]
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def _logits(fw: Any, h: Any, weight: Any, bias: Any) -> Any:
    z = fw.kernels.logits(h, weight)
    return z if bias is None else z + bias


def _per_row(opts: Options) -> Options:
    return opts if opts.reduction == "none" else replace(opts, reduction="none")


def _valid_weight(fw: Any, labels: Any, ignore_index: Any, class_weight: Any, dtype: Any) -> tuple[Any, Any]:
    """``(valid, w_y)``: each row's validity (bool) and its label's class weight (0 when
    ignored; 1 without class weights), in ``dtype``."""
    xp = fw.xp
    y = fw.index(labels)
    valid = y != ignore_index if ignore_index is not None and fw.holds_index(ignore_index) else xp.zeros_like(y) == 0
    if class_weight is None:
        return valid, xp.astype(valid, dtype)
    w = xp.take(xp.astype(class_weight, dtype), xp.where(valid, y, 0), axis=0)
    return valid, xp.where(valid, w, 0.0)


def _reduction_scale(fw: Any, labels: Any, opts: Options, dtype: Any, class_weight: Any = None) -> Any:
    """d(loss)/d(row loss): 1 for ``"sum"`` and ``"none"``, 1/#valid rows for ``"mean"``
    (1/Σ_valid w_y with class weights, PyTorch's denominator; 0 when it is 0), counted in
    ``dtype``. It depends on the labels only, so it is known before the first chunk."""
    xp = fw.xp
    if opts.reduction != "mean":
        return 1.0
    if class_weight is not None:
        return mean_scale(xp, xp.sum(_valid_weight(fw, labels, opts.ignore_index, class_weight, dtype)[1]))
    ignoring = opts.ignore_index is not None and fw.holds_index(opts.ignore_index)
    if not ignoring and labels.shape[0] is not None:
        return mean_scale(xp, float(labels.shape[0]))
    y = fw.index(labels)
    valid = y != opts.ignore_index if ignoring else y == y  # every row
    return mean_scale(xp, xp.sum(xp.astype(valid, dtype)))


def chunk_step(
    run: Any, h: Any, y: Any, weight: Any, bias: Any, row_opts: Options, stats_c: Any, scale: Any, cot: Any,
    needs: tuple[bool, bool, bool], d_weight: Any, d_bias: Any, filter_eps: float | None = None, row_blocks: int = 1,
) -> tuple[Any, Any, Any, Any, Any]:
    """One chunk of rows ``h`` (C, H) with labels ``y``: ``(loss_c, stats_c, dh_c, d_weight, d_bias)``.

    With ``stats_c=None`` the chunk's per-row loss and log-sum-exp are computed (the
    forward); otherwise ``loss_c`` is None. For the gradients named by ``needs`` (hidden,
    weight, bias) at cotangent ``cot``: ``dh_c = g @ W`` of this chunk, and the running
    sums ``d_weight += g.T @ h``, ``d_bias += Σ_rows g`` (started when given as None), in
    the compute dtype. ``g = dℓ/dz`` is the core's closed form, by ``run``; with
    ``filter_eps``, filtered by blocks (:mod:`smoothloss._filter`; ``row_blocks``: the
    chunk's blocks of rows).
    """
    fw = run.fw
    xp = fw.xp
    acc = compute_dtype(xp, h.dtype)
    z = _logits(fw, h, weight, bias)
    loss_c = dh_c = None
    if not any(needs):
        if stats_c is None:
            loss_c, stats_c, _ = run.forward(z, y, None, row_opts)
        return loss_c, stats_c, dh_c, d_weight, d_bias
    peak = None if filter_eps is None else _filter.peaks(fw, z)  # (before z becomes g)
    if stats_c is None:  # the forward and the gradient of one chunk, at once
        loss_c, stats_c, g = run.chunk_forward_and_grad(z, y, None, row_opts, scale, cot)
    else:
        g, _, _ = run.backward(z, y, None, row_opts, stats_c, scale, None, cot, (True, False, False))
    del z
    if peak is not None:
        keep = _filter.kept_blocks(fw, peak, y, stats_c, row_opts, filter_eps, row_blocks)
        if run.loop is python_loop and is_zero(row_opts.label_smoothing):  # skipped blocks are 0: not multiplied
            return (loss_c, stats_c, *_kept_products(fw, g, h, weight, keep, needs, d_weight, d_bias, acc))
        g = _filter.skipped_fill(fw, g, keep, y, row_opts, int(weight.shape[0]), scale, cot)
    if needs[0]:
        dh_c = xp.matmul(g, weight)
    if needs[1]:  # in place where the framework allows it
        if d_weight is None:
            d_weight = xp.zeros_like(weight, dtype=acc)
        d_weight = fw.kernels.add_matmul(d_weight, g, h)
    if needs[2]:
        d_b = xp.sum(g if g.dtype == acc else xp.astype(g, acc), axis=0)
        d_bias = d_b if d_bias is None else d_bias + d_b
    return loss_c, stats_c, dh_c, d_weight, d_bias


def _runs(kept: list[bool]) -> list[tuple[int, int]]:
    """The runs ``[j0, j1)`` of consecutive True entries of ``kept``."""
    runs: list[tuple[int, int]] = []
    for j, k in enumerate(kept):
        if k and runs and runs[-1][1] == j:
            runs[-1] = (runs[-1][0], j + 1)
        elif k:
            runs.append((j, j + 1))
    return runs


def _add_product(fw: Any, acc: Any, index: Any, a: Any, b: Any) -> Any:
    """``acc[index] += a.T @ b``: in place where the kernels are, else by assignment."""
    view = acc[index]
    out = fw.kernels.add_matmul(view, a, b)
    if out is not view:
        acc[index] = out
    return acc


def _kept_products(
    fw: Any, g: Any, h: Any, weight: Any, keep: Any, needs: tuple[bool, bool, bool], d_weight: Any, d_bias: Any,
    acc: Any,
) -> tuple[Any, Any, Any]:
    """``(dh_c, d_weight, d_bias)`` of one chunk from the blocks of ``g`` that ``keep``
    (row blocks × class blocks, :func:`smoothloss._filter.kept_blocks`) marks, one
    product per run of consecutive kept blocks (over consecutive row blocks that keep the
    same ones); the others are 0 and are not multiplied.
    Eager arrays only (a host read of ``keep``, slices written in place)."""
    xp = fw.xp
    B = _filter.BLOCK
    c, v = int(g.shape[0]), int(g.shape[1])
    device = fw.device(g)
    dh_c = xp.zeros((c, int(h.shape[1])), dtype=g.dtype, device=device) if needs[0] else None
    if needs[1] and d_weight is None:
        d_weight = xp.zeros_like(weight, dtype=acc)
    if needs[2] and d_bias is None:
        d_bias = xp.zeros((v,), dtype=acc, device=device)
    if hasattr(keep, "tolist"):
        kept = keep.tolist()
    else:  # (array-api-strict: no tolist, no iteration)
        kept = [[bool(keep[i, j]) for j in range(int(keep.shape[1]))] for i in range(int(keep.shape[0]))]
    groups: list[tuple[int, int, list[bool]]] = []  # consecutive row blocks that keep the same class blocks
    for b, row in enumerate(kept[: -(-c // B)]):
        end = min((b + 1) * B, c)
        if groups and groups[-1][2] == row:
            groups[-1] = (groups[-1][0], end, row)
        else:
            groups.append((b * B, end, row))
    for start, end, row in groups:
        rows = slice(start, end)
        for j0, j1 in _runs(row):
            cls = slice(j0 * B, min(j1 * B, v))
            g_b = g[rows, cls]
            if needs[0]:
                dh_c = _add_product(fw, dh_c, (rows, slice(None)), xp.moveaxis(g_b, 0, 1), weight[cls, :])
            if needs[1]:
                d_weight = _add_product(fw, d_weight, (cls, slice(None)), g_b, h[rows, :])
            if needs[2]:
                d_bias[cls] = d_bias[cls] + xp.sum(g_b if g_b.dtype == acc else xp.astype(g_b, acc), axis=0)
    return dh_c, d_weight, d_bias


def python_loop(
    run: Any, step: Any, hidden: Any, weight: Any, bias: Any, labels: Any, row_opts: Options, chunk: int,
    stats: Any, scale: Any, cotangent: Any, needs: tuple[bool, bool, bool],
) -> tuple[Any, Any, Any, Any, Any]:
    """:func:`_sweep`'s loop as a Python ``for`` over the chunks (eager frameworks, NumPy)."""
    xp = run.fw.xp
    per_row_cotangent = getattr(cotangent, "ndim", 0) > 0
    parts: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    d_weight = d_bias = None
    for i, j in _bounds(int(hidden.shape[0]), chunk):
        loss_c, stats_c, dh_c, d_weight, d_bias = step(
            run, hidden[i:j, ...], labels[i:j], weight, bias, row_opts, None if stats is None else stats[i:j, ...],
            scale, cotangent[i:j] if per_row_cotangent else cotangent, needs, d_weight, d_bias,
        )
        for part, value in zip(parts, (loss_c, stats_c, dh_c)):
            part.append(value)
    return (
        _concat(xp, parts[0]) if stats is None else None,
        _concat(xp, parts[1]) if stats is None else stats,
        _concat(xp, parts[2]) if needs[0] else None,
        d_weight,
        d_bias,
    )


def _valid_rows(run: Any, labels: Any, opts: Options) -> tuple[Any, Any] | None:
    """``(rows, back)`` where some rows are ignored and the rows can be picked before the
    loop (concrete labels, a Python loop): the valid rows' indices, and for each row its
    place among them, or the count of valid rows (one past them) where it is ignored.
    None otherwise. An ignored row's loss and gradient are 0, so its logits need not be
    made: the sweep runs over the valid rows alone (one host read of the count)."""
    fw = run.fw
    ignore = opts.ignore_index
    if run.loop is not python_loop or ignore is None or not fw.holds_index(ignore) or not fw.is_concrete(labels):
        return None
    xp = fw.xp
    valid = fw.index(labels) != ignore
    count = xp.cumulative_sum(xp.astype(valid, fw.index_dtype))
    n = int(count[-1]) if int(labels.shape[0]) else 0
    if n == int(labels.shape[0]):
        return None
    return xp.nonzero(valid)[0], xp.where(valid, count - 1, n)


def _rows_back(xp: Any, a: Any, back: Any) -> Any:
    """Per-row values of the valid rows (n, ...) back at every row (N, ...): zeros at the ignored ones."""
    zero = xp.zeros((1, *a.shape[1:]), dtype=a.dtype, device=getattr(a, "device", None))
    return xp.take(xp.concat([a, zero], axis=0), back, axis=0)


def _sweep(
    run: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int, stats: Any, scale: Any,
    cotangent: Any, needs: tuple[bool, bool, bool],
) -> tuple[Any, Any, Any, Any, Any]:
    """One pass of :func:`chunk_step` over the row chunks: ``(losses, stats, d_hidden,
    d_weight, d_bias)``.

    With ``stats=None`` each chunk's per-row loss and log-sum-exp are computed (the
    forward) and returned; otherwise ``stats`` is the forward's and no loss is computed.
    The gradients named by ``needs`` are accumulated at ``cotangent`` (a scalar, or one
    per row); the others, and every loss/stats that was not computed, are None. The loop
    over the chunks is ``run.loop``: a Python ``for``, except in JAX
    (a ``lax.scan``) and in a TensorFlow graph (a ``tf.while_loop``, which also serves a
    batch axis unknown until run time): XLA and TensorFlow's executor would run an
    unrolled loop's chunks side by side and hold their logits at once. Every loop runs
    the same :func:`chunk_step`. A sharded run (one rank's classes,
    :class:`smoothloss._vocab_parallel.Sharded`) sums ``d_hidden`` over the ranks with its
    ``all_sum``, once, after the loop.
    """
    xp = run.fw.xp
    row_opts = _per_row(opts)
    needs = (needs[0], needs[1], needs[2] and bias is not None)
    filter_eps = getattr(chunk, "filter_eps", None)
    step = chunk_step
    if filter_eps is not None:  # blocks of rows counted from the first row: no row is left out
        step = partial(chunk_step, filter_eps=filter_eps, row_blocks=-(-int(chunk) // _filter.BLOCK))
    picked = None if filter_eps is not None else _valid_rows(run, labels, opts)
    if picked is not None:
        rows, back = picked
        hidden, labels = xp.take(hidden, rows, axis=0), xp.take(labels, rows, axis=0)
        stats = None if stats is None else xp.take(stats, rows, axis=0)
        if getattr(cotangent, "ndim", 0) > 0:
            cotangent = xp.take(cotangent, rows, axis=0)
    losses, stats, d_hidden, d_weight, d_bias = run.loop(
        run, step, hidden, weight, bias, labels, row_opts, chunk, stats, scale, cotangent, needs
    )
    if picked is not None:
        losses, stats, d_hidden = (None if a is None else _rows_back(xp, a, back) for a in (losses, stats, d_hidden))
    all_sum = getattr(run, "all_sum", None)  # a sharded run: each rank's g @ W_local is one term of d_hidden
    if d_hidden is not None and all_sum is not None:
        d_hidden = all_sum(d_hidden)
    if d_weight is not None and d_weight.dtype != weight.dtype:
        d_weight = xp.astype(d_weight, weight.dtype)
    if d_bias is not None and d_bias.dtype != bias.dtype:
        d_bias = xp.astype(d_bias, bias.dtype)
    return losses, stats, d_hidden, d_weight, d_bias


def chunked_forward(
    run: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int,
    needs: tuple[bool, bool, bool] = (False, False, False),
) -> tuple[Any, Any, Any, Any]:
    """``(loss, stats, scale, grads)`` over 2-D ``hidden`` (N, H) and 1-D ``labels`` (N,).

    ``stats`` is each row's log-sum-exp as the core keeps it (N, 2), ``scale``
    d(loss)/d(per-row loss): 1 for ``"sum"`` and ``"none"``, 1/#valid rows for ``"mean"`` (0 when no row is valid).

    For ``"mean"`` and ``"sum"`` the loss is a scalar, so its gradient is the gradient at
    cotangent 1 times the incoming cotangent: ``grads`` is then ``(d_hidden, d_weight,
    d_bias)`` at cotangent 1, made in the same pass as the loss (entries of ``needs``
    that are False give None), and the backward only scales them. This saves making
    every chunk's logits a second time. For ``"none"`` (one cotangent per row) and when
    no gradient is needed, ``grads`` is None: :func:`chunked_backward` makes them.
    """
    xp = run.fw.xp
    scale = _reduction_scale(run.fw, labels, opts, compute_dtype(xp, hidden.dtype), getattr(run, "class_weight", None))
    early = opts.reduction != "none" and any(needs)
    losses, stats, d_h, d_w, d_b = _sweep(
        run, hidden, weight, bias, labels, opts, chunk, None, scale, 1.0, needs if early else (False, False, False)
    )
    loss = losses if opts.reduction == "none" else xp.sum(losses) * scale
    return loss, stats, scale, ((d_h, d_w, d_b) if early else None)


class _ClassWeighted:
    """``run`` with a class weight (V,) given to each chunk's closed form (the core's
    ``weight``, PyTorch's semantics: ``(1-ε)·w_y·ℓ_y + (ε/V)·Σ_c w_c·ℓ_c`` per row; the
    mean divides by Σ_valid w_y)."""

    compiled = False

    def __init__(self, run: Any, class_weight: Any) -> None:
        self.fw, self.loop, self.run, self.class_weight = run.fw, run.loop, run, class_weight

    def forward(self, z: Any, y: Any, _weight: Any, opts: Options) -> Any:
        return self.run.forward(z, y, self.class_weight, opts)

    def backward(self, z: Any, y: Any, _weight: Any, opts: Options, *rest: Any) -> Any:
        return self.run.backward(z, y, self.class_weight, opts, *rest)

    def chunk_forward_and_grad(self, z: Any, y: Any, _weight: Any, opts: Options, *rest: Any) -> Any:
        return self.run.chunk_forward_and_grad(z, y, self.class_weight, opts, *rest)


def with_class_weight(run: Any, class_weight: Any) -> Any:
    """``run`` whose chunks use the class weight ``class_weight`` (``run`` itself for None).
    The compiled closed forms take no class weight: the eager core serves a weighted call."""
    if class_weight is None:
        return run
    return _ClassWeighted(run, class_weight)


def _logit_stats(fw: Any, z: Any, y: Any, softcap: Any, acc: Any) -> tuple[Any, Any, Any]:
    """``(lse, argmax, softmax(z)_y)`` of logits ``z`` (C, V) with labels ``y`` (index dtype)."""
    xp = fw.xp
    z = soft_cap(xp, z if z.dtype == acc else xp.astype(z, acc), softcap)[0]
    m = xp.max(z, axis=-1, keepdims=True)
    lse = xp.log(xp.sum(xp.exp(z - m), axis=-1)) + m[:, 0]
    classes = xp.arange(int(z.shape[-1]), dtype=y.dtype, device=fw.device(y))
    z_y = xp.sum(xp.where(xp.expand_dims(y, axis=-1) == classes, z, 0.0), axis=-1)
    return lse, xp.argmax(z, axis=-1), xp.exp(z_y - lse)


def row_statistics(
    fw: Any, hidden: Any, weight: Any, bias: Any, labels: Any, ignore_index: Any, softcap: Any, chunk: int
) -> tuple[Any, Any, Any, Any]:
    """``(valid, lse, argmax, p_y)`` per row of 2-D ``hidden``, chunk by chunk, for metrics
    and detached factors: the (soft-capped) logits' log-sum-exp and first argmax, and the
    label's probability ``softmax(z)_y`` (0 at ignored rows), in the compute dtype. With
    ``weight=None``, ``hidden`` holds the logits themselves. No gradient flows through
    them (the caller runs this without autodiff)."""
    xp = fw.xp
    acc = compute_dtype(xp, hidden.dtype)
    valid, _ = _valid_weight(fw, labels, ignore_index, None, acc)
    y = xp.where(valid, fw.index(labels), 0)
    parts: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for i, j in _bounds(int(hidden.shape[0]), chunk):
        z = hidden[i:j, ...] if weight is None else _logits(fw, hidden[i:j, ...], weight, bias)
        for part, value in zip(parts, _logit_stats(fw, z, y[i:j], softcap, acc)):
            part.append(value)
    lse, arg, p_y = (_concat(xp, part) for part in parts)
    return valid, lse, arg, xp.where(valid, p_y, 0.0)


def chunked_backward(
    run: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int, stats: Any, scale: Any,
    cotangent: Any, needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Any, Any, Any]:
    """``(d_hidden, d_weight, d_bias)`` for 2-D ``hidden``, making each chunk's logits
    again; entries of ``needs`` that are False (and ``d_bias`` without a bias) give None.

    ``stats`` and ``scale`` come from :func:`chunked_forward`; ``cotangent`` is the
    incoming cotangent, a scalar or, for ``reduction="none"``, one per row.
    """
    return _sweep(run, hidden, weight, bias, labels, opts, chunk, stats, scale, cotangent, needs)[2:]


def prepare(
    fw: Any, hidden: Any, weight: Any, labels: Any, bias: Any, chunk_size: Any, options: dict[str, Any],
    class_weight: Any = None, num_classes: int | None = None, filter_eps: Any = None,
) -> tuple[Any, Any, Any, Any, Options, _filter.Chunk]:
    """Check the arguments; return (hidden (N, H), weight, labels (N,), bias, opts, chunk).

    ``chunk`` is a :class:`smoothloss._filter.Chunk`: the rows per chunk, with the
    gradient filter's threshold resolved from ``filter_eps`` (then the chunk is a whole
    number of filtering blocks of rows, rounded down, at least one).

    ``num_classes``: the global class count K where ``weight`` holds one rank's rows of a
    projection sharded by class (vocab parallel); the options and labels are checked
    against K (:func:`smoothloss._vocab_parallel.options`). None: ``weight``'s own V."""
    xp = fw.xp
    V.check_logits(xp, hidden, "hidden")
    if weight.ndim != 2 or int(weight.shape[1]) != int(hidden.shape[-1]):
        raise ValueError(
            f"weight must have shape (V, H) with H = hidden.shape[-1] = {int(hidden.shape[-1])}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight's dtype {weight.dtype} differs from hidden's {hidden.dtype}")
    rows = int(weight.shape[0])
    if bias is not None:
        if tuple(bias.shape) != (rows,):
            raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias's dtype {bias.dtype} differs from hidden's {hidden.dtype}")
    if not V.is_integer(xp, labels.dtype):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    lead, label_shape = tuple(hidden.shape[:-1]), tuple(labels.shape)
    if len(label_shape) != len(lead) or any(a != b for a, b in zip(label_shape, lead) if None not in (a, b)):
        raise ValueError(
            f"labels must have hidden's shape without the last axis, {tuple(hidden.shape[:-1])}, "
            f"got {tuple(labels.shape)}"
        )
    # -1: a TensorFlow graph's batch axis may be unknown until run time
    n = -1 if None in lead else math.prod([int(s) for s in lead])
    hidden2 = xp.reshape(hidden, (n, int(hidden.shape[-1])))
    labels1 = xp.reshape(labels, (n,))
    if num_classes is None:  # the options are checked by the core on a zero-row logits probe (no N×V array)
        opts = validate(fw, _logits(fw, hidden2[0:0, ...], weight, bias), labels1[0:0], class_weight, **options)
        opts = replace(opts, axis=-1)
        num_classes = rows
    else:
        opts = vocab_parallel_options(num_classes, **options)
    V.check_label_values(fw, labels1, num_classes, opts.ignore_index)
    if chunk_size is None:
        itemsize = xp.finfo(compute_dtype(xp, hidden.dtype)).bits // 8
        chunk = default_chunk(rows, itemsize, fw.kernels.small_chunks(hidden))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    else:
        chunk = chunk_size
    eps = _filter.resolve(filter_eps, float(xp.finfo(hidden.dtype).eps), opts)
    if eps is not None:
        if class_weight is not None:
            raise NotImplementedError("filter_eps with class_weight is not implemented; pass filter_eps=None")
        chunk = max(_filter.BLOCK, chunk - chunk % _filter.BLOCK)
    return hidden2, weight, labels1, bias, opts, _filter.Chunk(chunk, eps)
