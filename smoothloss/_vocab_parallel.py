r"""Label-smoothed cross-entropy with the classes sharded across ranks (vocab parallel).

Each of R ranks holds a contiguous slice of the K = R·V_local classes, rank r the
classes ``[offset, offset + V_local)`` with ``offset = r·V_local``, and every rank holds
all positions and the global integer labels. The loss of a position needs three row
statistics over **all** K classes, each obtained with one collective:

* ``lse = m + lse_rel``, ``lse_rel = log Σ_r Σ_{c∈r} exp(x_c - m)`` with
  ``m = max_r max_{c∈r} x_c`` (all-max, then all-sum of the shifted sum-exp);
* ``m - x_y``: read by the rank that owns the label (the others give 0), then all-summed;
* ``Σ_c (m - x_c)``: all-summed (only with smoothing, ``off > 0``).

Every statistic is formed from the shifted logits ``x - m <= 0``, so a large common
offset neither cancels nor overflows.

The sum-type statistics travel in one all-sum. The loss is then the core's
:func:`smoothloss._formulas.integer_loss` with the **global** K (so ``off`` = ε/K or
ε/(K-1) and the smoothing term covers every class, not only the local ones, unlike
Megatron-LM's local average):

``ℓ = (on-off)·(lse - x_y) + off·Σ_c (lse - x_c) + z_loss·lse²``,

identical on every rank (with ``softcap`` each rank first caps its own slice,
``x ← softcap·tanh(x/softcap)``, and the gradient gains the factor ``1 - tanh²``; with
``kl`` the target's entropy, a constant of on, off and K, is subtracted). The gradient
needs no collective: with the per-position
cotangent s (times the reduction's scale, 0 at ignored positions, NaN at a label outside
[0, K), which no rank owns),

``dℓ/dx_c = (1 + 2·z_loss·lse)·s·softmax_c - s·off - [c = y]·s·(on-off)``

(``Σ_c q_c = 1``), where ``softmax_c = exp((x_c - m) - lse_rel)`` uses the saved
**global** statistics,
so each rank computes its own V_local-wide slice from its local logits.

This module is backend-neutral: the collectives are the two callables ``all_max`` and
``all_sum`` (elementwise over ranks, returning a new array); the JAX and PyTorch
bindings (``smoothloss.backends.jax``, ``smoothloss.backends.torch``) supply them and
register the backward as the gradient.
"""

from __future__ import annotations

from typing import Any, Callable

from smoothloss import _validation as V
from smoothloss._formulas import (
    compute_dtype, integer_grad_coefficients, integer_loss, is_zero, reduce, smoothing_coefficients, soft_cap,
    soft_cap_grad,
)
from smoothloss._options import Options

__all__ = ["Sharded", "options", "vocab_parallel_backward", "vocab_parallel_forward"]

Collective = Callable[[Any], Any]


def options(num_classes: int, **options: Any) -> Options:
    """Check the options (as :func:`smoothloss.cross_entropy` does) for the global
    K = ``num_classes``; the classes are the last axis."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    opts = Options.checked(axis=-1, **options)
    V.check_num_classes(num_classes, opts.convention, opts.label_smoothing)
    return opts


class _Local:
    """One shard in compute layout: compute dtype, valid mask, the locally owned labels,
    and the smoothing coefficients of the global K."""

    def __init__(self, fw: Any, local_logits: Any, labels: Any, offset: Any, num_classes: int, opts: Options) -> None:
        xp = self.xp = fw.xp
        self.K = num_classes
        self.on, self.off = smoothing_coefficients(opts.label_smoothing, num_classes, opts.convention)
        self.in_dtype = local_logits.dtype
        cdtype = self.cdtype = compute_dtype(xp, local_logits.dtype)
        x = local_logits if cdtype == local_logits.dtype else xp.astype(local_logits, cdtype)
        self.x, self.capped = soft_cap(xp, x, opts.softcap)
        v_local = int(self.x.shape[-1])
        y = fw.index(labels)
        self.valid = None
        if opts.ignore_index is not None and fw.holds_index(opts.ignore_index):
            self.valid = y != opts.ignore_index
            y = xp.where(self.valid, y, 0)
        self.bad = (y < 0) | (y >= num_classes)
        local = y - offset
        self.owned = (local >= 0) & (local < v_local)  # this rank holds the label's logit
        self.y = xp.where(self.owned, local, 0)  # a safe local index everywhere


def vocab_parallel_forward(
    fw: Any, local_logits: Any, labels: Any, offset: Any, num_classes: int, opts: Options, all_max: Collective,
    all_sum: Collective,
) -> tuple[Any, Any, Any]:
    r"""``(loss, stats, scale)`` of the sharded loss; the same loss on every rank.

    With the global statistics ``lse``, ``m - x_y`` and ``Σ_c (m - x_c)`` (see the module
    docstring; two collectives: one all-max of a (...,) array and one all-sum of a
    (..., 3) or (..., 2) array), each position's loss is

    ``ℓ = (on-off)·(lse - x_y) + off·Σ_c (lse - x_c) + z_loss·lse²``

    from :func:`smoothloss._formulas.integer_loss`, 0 at ignored positions, then reduced
    over positions (every rank holds all positions, so the reduction is local).

    Args:
        local_logits: (..., V_local) floating logits of this rank's classes; 16-bit
            logits are computed in float32.
        labels: (...) integer global class indices in [0, K) (or ``ignore_index``).
        offset: the first global class held by this rank (an int or a 0-d integer array).
        num_classes: the global K.
        opts: from :func:`options`.
        all_max: elementwise maximum over the ranks of an array (returns the result).
        all_sum: elementwise sum over the ranks of an array (returns the result).

    Returns:
        The reduced loss, each position's global log-sum-exp (compute dtype) and
        d(loss)/d(per-position loss) of the reduction (a float or a 0-d array), the
        last two for :func:`vocab_parallel_backward`.
    """
    L = _Local(fw, local_logits, labels, offset, num_classes, opts)
    xp, x = L.xp, L.x
    m = all_max(xp.max(x, axis=-1))
    z = x - xp.expand_dims(m, axis=-1)  # <= 0: no cancellation in the sums, at any offset
    stats = [xp.sum(xp.exp(z), axis=-1)]
    z_y = xp.take_along_axis(z, xp.expand_dims(L.y, axis=-1), axis=-1)[..., 0]
    stats.append(xp.where(L.owned, -z_y, xp.zeros_like(z_y)))  # m - x_y on the owner
    if L.off:
        stats.append(-xp.sum(z, axis=-1))  # Σ_c (m - x_c)
    del z
    stats = all_sum(xp.stack(stats, axis=-1))
    lse_rel = xp.log(stats[..., 0])
    sum_nll = lse_rel * float(L.K) + stats[..., 2] if L.off else None
    loss = integer_loss(
        lse_rel + stats[..., 1], sum_nll, on=L.on, off=L.off, w_y=1.0, sum_w=float(L.K), kl=opts.kl
    )
    if not is_zero(opts.z_loss):
        lse = m + lse_rel
        loss = loss + opts.z_loss * (lse * lse)
    loss = xp.where(L.bad, xp.nan, loss)  # a label outside [0, K): no rank owns it
    den = None
    if L.valid is not None:
        loss = xp.where(L.valid, loss, xp.zeros_like(loss))
        den = xp.sum(xp.astype(L.valid, loss.dtype))
    reduced, scale = reduce(xp, loss, opts.reduction, den)
    return reduced, xp.stack([m, lse_rel], axis=-1), scale


def vocab_parallel_backward(
    fw: Any, local_logits: Any, labels: Any, offset: Any, num_classes: int, opts: Options, stats: Any, scale: Any,
    cotangent: Any,
) -> Any:
    r"""This rank's (..., V_local) slice of d(loss)/d(logits), in closed form, no collective.

    With s = cotangent·scale (0 at ignored positions) and the core's
    ``(row, on_mass) = integer_grad_coefficients(lse, s, ...)`` for the global K:

    ``g_c = row·exp((x_c - m) - lse_rel) - s·off - [c = y]·on_mass`` for the local classes c,
    the last term only on the rank that owns the label y.

    Args:
        fw, local_logits, labels, offset, num_classes, opts: as given to
            :func:`vocab_parallel_forward`.
        stats, scale: from :func:`vocab_parallel_forward` (the **global** log-sum-exp as
            (row maximum, log-sum-exp relative to it), stacked on a last axis of 2).
        cotangent: the incoming cotangent of the loss (positions' shape for
            ``reduction="none"``, else a scalar).

    Returns:
        The gradient slice, in the dtype of ``local_logits``.
    """
    L = _Local(fw, local_logits, labels, offset, num_classes, opts)
    xp, x = L.xp, L.x
    m, lse_rel = stats[..., 0], stats[..., 1]
    s = xp.zeros_like(m) + cotangent * scale  # per position, in the statistics' dtype
    if s.dtype != L.cdtype:
        s = xp.astype(s, L.cdtype)
    s = xp.where(L.bad, xp.nan, s)
    if L.valid is not None:
        s = xp.where(L.valid, s, xp.zeros_like(s))
    row, on_mass = integer_grad_coefficients(
        None if is_zero(opts.z_loss) else m + lse_rel, s, on=L.on, off=L.off, w_y=1.0, sum_w=float(L.K), z_loss=opts.z_loss
    )
    shift = xp.expand_dims(s, axis=-1) * L.off if L.off else 0.0
    # the statistics are global: the native softmax kernels would normalise over the local classes
    g = fw.kernels.softmax_affine(x, (m, lse_rel), xp.expand_dims(row, axis=-1), shift, row_lse=False)
    g = fw.kernels.add_at_labels(g, L.y, xp.where(L.owned, -on_mass, xp.zeros_like(on_mass)))
    g = soft_cap_grad(g, L.capped)
    return g if g.dtype == L.in_dtype else xp.astype(g, L.in_dtype)


class Sharded:
    r"""The chunked linear loss's per-chunk closed form (the ``run`` of
    :mod:`smoothloss._linear`) over one rank's rows of a projection sharded by class:
    each chunk's local logits ``z = h_c @ W_local.T (+ b_local)`` (C, V_local) go through
    :func:`vocab_parallel_forward` (two collectives per chunk: the global row statistics)
    and :func:`vocab_parallel_backward` (none). Each rank's ``g @ W_local`` is its term of
    the hidden gradient: :func:`smoothloss._linear._sweep` sums them with ``all_sum``
    once, so every rank returns the unsharded ``d_hidden``; ``d_weight``/``d_bias`` are
    the rank's own rows. The labels (and so the chunks) are the same on every rank, so
    every rank runs the same collectives in the same order.

    ``offset`` is this rank's first class: an int, or a callable of a chunk's local
    logits that returns it (JAX: ``axis_index`` is traced where the chunk is, since a
    custom derivative's static arguments, this object among them, hold no tracer)."""

    compiled = False

    def __init__(self, run: Any, offset: Any, num_classes: int, all_max: Collective, all_sum: Collective) -> None:
        self.fw, self.loop = run.fw, run.loop
        self._offset, self.num_classes, self.all_max, self.all_sum = offset, num_classes, all_max, all_sum

    def offset(self, z: Any) -> Any:
        """This rank's first class, for a chunk's local logits ``z``."""
        return self._offset(z) if callable(self._offset) else self._offset

    def forward(self, z: Any, y: Any, _weight: Any, opts: Options) -> tuple[Any, Any, Any]:
        loss, stats, _ = vocab_parallel_forward(
            self.fw, z, y, self.offset(z), self.num_classes, opts, self.all_max, self.all_sum
        )
        return loss, stats, 1.0

    def backward(
        self, z: Any, y: Any, _weight: Any, opts: Options, stats: Any, scale: Any, _loss: Any, cotangent: Any,
        _needs: Any = None,
    ) -> tuple[Any, None, None]:
        g = vocab_parallel_backward(self.fw, z, y, self.offset(z), self.num_classes, opts, stats, scale, cotangent)
        return g, None, None

    def chunk_forward_and_grad(
        self, z: Any, y: Any, _weight: Any, opts: Options, scale: Any, cotangent: Any
    ) -> tuple[Any, Any, Any]:
        loss, stats, _ = self.forward(z, y, None, opts)
        return loss, stats, self.backward(z, y, None, opts, stats, scale, None, cotangent)[0]
