"""Label-smoothed cross-entropy over arrays: validation, forward and closed-form backward.

The formulas are :mod:`smoothloss._formulas`'; this module applies them to arrays of
one framework, given as ``fw``, the object :func:`smoothloss.backends.framework`
returns for the inputs: its namespace ``fw.xp``, its device lookup, its test for arrays
whose values cannot be read (tracers), and its kernels ``fw.kernels`` (native, or the
Array-API composition). No framework is imported here.

Notation: K classes, x the logits of one position, ``lse = log Σ_c exp(x_c)``, so
-log p_c = lse - x_c. The log-sum-exp is kept as two numbers per position, the row's
maximum m and ``lse_rel = log Σ_c exp(x_c - m)``, stacked as ``stats`` (..., 2): every
-log p_c is formed as ``lse_rel + (m - x_c)``, exact to rounding at any common offset of
the logits, and overflowing only where the loss itself does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from smoothloss import _options, _validation as V
from smoothloss._formulas import (
    compute_dtype, integer_grad_coefficients, integer_loss, is_zero, known_count, reduce, shifted_nll,
    smoothing_coefficients, soft_cap, soft_cap_grad,
)
from smoothloss._options import Options

__all__ = [
    "Options", "backward", "exp_grad_terms", "forward", "forward_and_grad", "forward_and_grad_in_place", "jvp",
    "split_stats", "validate",
]


def split_stats(stats: Any) -> tuple[Any, Any]:
    """``(m, lse_rel)`` of a ``stats`` array (..., 2), ``lse = m + lse_rel``; a pair
    (:func:`forward` without ``stats``) as it is."""
    return stats if isinstance(stats, tuple) else (stats[..., 0], stats[..., 1])


def validate(fw: Any, logits: Any, targets: Any, weight: Any, **options: Any) -> Options:
    """Check every argument and return the normalised :class:`Options`.

    Value checks (label ranges, and the ranges of options given as 0-d arrays) run on
    the host where the values can be read without a sync, and else as the framework's
    run-time check where it has one. The checks on dtypes, shapes and options run
    once per combination of them (:func:`_static_checks`); the label values and array
    options are checked on every call (array options are cast to the compute dtype).
    """
    options, arrays = _options.arrays(options)
    key = _static_key(fw, logits, targets, weight, options)
    try:
        static = None if key is None else _STATIC.get(key)
    except TypeError:  # unhashable: an array option, a symbolic dimension
        key = static = None
    if static is None:
        static = _static_checks(fw, logits, targets, weight, options)
        if key is not None:
            if len(_STATIC) >= _STATIC_SIZE:
                _STATIC.clear()
            _STATIC[key] = static
    opts, K, unmasked = static
    if arrays:  # 0-d array values of the varying options: checked on every call
        arrays = V.check_array_options(fw, arrays, fw.dtype_fact(compute_dtype, logits.dtype))
        opts = replace(opts, **arrays)
        unmasked = None if unmasked is None else replace(unmasked, **arrays)
    if unmasked is not None:  # integer labels of a known class count: their values
        if V.check_label_values(fw, targets, K, opts.ignore_index):
            return unmasked  # no label equals ignore_index: no mask to apply
    return opts


# The results of _static_checks by _static_key; cleared when full (a process rarely
# sees more than a handful of shapes and option sets).
_STATIC: dict[tuple[Any, ...], tuple[Options, Any, Any]] = {}
_STATIC_SIZE = 1024


def _static_key(fw: Any, logits: Any, targets: Any, weight: Any, options: dict[str, Any]) -> tuple[Any, ...] | None:
    """What :func:`_static_checks` depends on; None while a call is being compiled. (It
    may still not hash, e.g. with an array option or a symbolic dimension: the lookup
    then keeps nothing.)"""
    if not fw.cacheable():
        return None
    return (
        fw, logits.dtype, tuple(logits.shape), targets.dtype, tuple(targets.shape),
        None if weight is None else (weight.dtype, tuple(weight.shape)),
        _options.key(options),
    )


def _static_checks(fw: Any, logits: Any, targets: Any, weight: Any, options: dict[str, Any]) -> tuple[Options, Any, Any]:
    """The checks that depend on dtypes, shapes and options only: ``(opts, K, unmasked)``,
    with ``unmasked`` the options to use when the label values turn out not to need an
    ignore mask (None: the labels' values are not checked, as for probability targets or
    a class count known at run time only)."""
    xp = fw.xp
    V.check_logits(xp, logits)
    opts = Options.checked(**options)
    opts = replace(opts, axis=V.normalize_axis(opts.axis, logits.ndim))
    K = None if V.unknown_class_count(logits, opts.axis, opts.kl) else int(logits.shape[opts.axis])
    integer = V.check_targets(xp, logits, targets, opts.axis)
    if K is not None:
        V.check_num_classes(K, opts.convention, opts.label_smoothing)
    V.check_weight(xp, weight, K)
    if opts.ignore_index is not None and not integer:
        raise ValueError(
            "ignore_index applies to integer class targets only; probability targets "
            "have no class index to ignore (give such positions zero weight instead)"
        )
    if not integer or K is None:  # (an unknown K is a graph: nothing to read)
        return opts, K, None
    return opts, K, opts if opts.ignore_index is None else replace(opts, ignore_index=None)


class _Prepared:
    """The inputs in compute layout: class axis last, compute dtype, softcap applied,
    integer labels widened to the framework's index dtype."""

    def __init__(self, fw: Any, logits: Any, targets: Any, weight: Any, opts: Options) -> None:
        xp = self.xp = fw.xp
        self.fw = fw
        self.kernels = fw.kernels  # (read once: the kernels switch holds for the whole call)
        self.in_dtype = logits.dtype
        cdtype = self.cdtype = fw.dtype_fact(compute_dtype, logits.dtype)
        self.moved = opts.axis not in (-1, logits.ndim - 1)
        self.axis = opts.axis
        x = logits if cdtype == logits.dtype else xp.astype(logits, cdtype)
        if self.moved:
            x = xp.moveaxis(x, opts.axis, -1)
        self.x, self.capped = soft_cap(xp, x, opts.softcap)
        if x.shape[-1] is None:  # K known at run time only (a graph traced with an unknown class axis)
            K = self.K = xp.astype(fw.dynamic_shape(x)[-1], fw.index_dtype)
            k_float: Any = xp.astype(K, cdtype)
        else:
            K = self.K = int(x.shape[-1])
            k_float = float(K)
        self.on, self.off = smoothing_coefficients(opts.label_smoothing, k_float, opts.convention)
        self.smoothed = not is_zero(self.off)
        self.hard = self.on - self.off
        self.w = None if weight is None else xp.astype(weight, cdtype)
        self.targets_dtype, self.weight_dtype = targets.dtype, None if weight is None else weight.dtype
        self.integer = fw.dtype_fact(V.is_integer, targets.dtype)
        self.valid = None
        self.w_y: Any = 1.0
        self.sum_w: Any = k_float if weight is None else xp.sum(self.w)
        self.bad = None
        if self.integer:
            y = fw.index(targets)
            if opts.ignore_index is not None and fw.holds_index(opts.ignore_index):
                # compared as integer values, in the index dtype: an ignore_index that
                # the index dtype cannot hold matches no label
                self.valid = y != opts.ignore_index
                y = xp.where(self.valid, y, 0)
            if not fw.is_concrete(targets):
                # unchecked labels (traced): one out of [0, K) makes its position's loss and
                # gradient row NaN, and is never used as an index
                self.bad = (y < 0) | (y >= K)
                y = xp.where(self.bad, 0, y)
            self.y = y
            if self.w is not None:
                self.w_y = xp.reshape(xp.take(self.w, xp.reshape(y, (-1,)), axis=0), fw.dynamic_shape(y))
                if self.valid is not None:  # an ignored position has no label, so no weight (not w_0's)
                    self.w_y = xp.where(self.valid, self.w_y, 0.0)
            self.t = None
        else:
            t = targets if targets.dtype == cdtype else xp.astype(targets, cdtype)
            self.t = xp.moveaxis(t, opts.axis, -1) if self.moved else t

    def soft_q(self) -> Any:
        """The smoothed probability targets (probability path)."""
        if not self.smoothed:
            return self.t
        return self.t * self.hard + self.off

    def hit(self) -> Any:
        """Boolean (..., K): the target class of each position (integer path)."""
        xp = self.xp
        classes = xp.arange(self.K, dtype=self.y.dtype, device=self.fw.device(self.y))
        return xp.expand_dims(self.y, axis=-1) == classes

    def to_layout(self, g: Any, dtype: Any) -> Any:
        """A (..., K) gradient back to the caller's layout and dtype."""
        xp = self.xp
        if self.moved:
            g = xp.moveaxis(g, -1, self.axis)
        return g if g.dtype == dtype else xp.astype(g, dtype)

    def denominator(self, loss: Any) -> Any:
        """The mean's denominator: Σ_valid w_y (integer labels with weights), else the
        number of valid positions."""
        xp = self.xp
        if self.integer and self.w is not None:
            return xp.sum(self.w_y)
        if self.valid is not None:
            return xp.sum(xp.astype(self.valid, loss.dtype))
        return None


def forward(
    fw: Any, logits: Any, targets: Any, weight: Any, opts: Options, *, stats: bool = True,
    keep: list[Any] | None = None,
) -> tuple[Any, Any, Any]:
    """``(loss, stats, scale)``: the reduced loss, each position's log-sum-exp as
    ``stats`` (..., 2) = (row maximum, log-sum-exp relative to it) in the compute dtype,
    O(positions), and d(loss)/d(per-position loss) of the reduction (a float or a 0-d
    array). The last two are what :func:`backward` needs besides the inputs.

    With ``stats=False``, for a backward of the logits' gradient alone, ``stats`` is a
    pair that only :func:`backward`'s ``softmax_affine`` reads: the statistics where the
    loss needs them, else what the kernels make instead (see ``log_softmax_stats``).

    With a list ``keep``, the Array-API composition's kernels append the exponentials
    ``exp(x - m)`` they sum (for :func:`exp_grad_terms`); native kernels append nothing."""
    P = _Prepared(fw, logits, targets, weight, opts)
    reduced, m, lse_rel, scale = _forward(P, opts, stats=stats or _reads_stats(P, opts), keep=keep)
    return reduced, (P.xp.stack([m, lse_rel], axis=-1) if stats else (m, lse_rel)), scale


def forward_and_grad(fw: Any, logits: Any, targets: Any, weight: Any, opts: Options) -> tuple[Any, Any]:
    """``(loss, d loss/d logits)``: :func:`forward`, then :func:`backward` at cotangent 1
    for the logits, on one preparation of the inputs (the sum of the per-position
    losses' gradient for ``"none"``)."""
    P = _Prepared(fw, logits, targets, weight, opts)
    reduced, m, lse_rel, scale = _forward(P, opts, stats=_reads_stats(P, opts))
    return reduced, _backward(P, opts, m, lse_rel, scale, reduced, 1.0, (True, False, False))[0]


def forward_and_grad_in_place(
    fw: Any, logits: Any, targets: Any, weight: Any, opts: Options, scale: Any, cotangent: Any
) -> tuple[Any, Any, Any]:
    """``(loss, stats, g)``: :func:`forward`, and the logits' gradient at ``cotangent``
    with the reduction's ``scale`` given (a chunk of a larger loss), made from the
    forward's exponentials ``e = exp(x - m)`` (:func:`exp_grad_terms`): one buffer of
    the logits' size, where the kernels work in place (``Kernels.overwrites``), that of
    ``logits`` itself, which is then overwritten. For integer labels, no softcap and
    logits in their compute dtype (the callers check)."""
    P = _Prepared(fw, logits, targets, weight, opts)
    keep: list[Any] = []
    scratch = {"scratch": True} if P.kernels.overwrites else {}
    reduced, m, lse_rel, _ = _forward(P, opts, keep=keep, **scratch)
    stats = P.xp.stack([m, lse_rel], axis=-1)
    factor, shift, labels, at_label = exp_grad_terms(fw, keep[0], targets, weight, opts, stats, scale, cotangent)
    g = P.kernels.add_at_labels(P.kernels.affine(keep[0], factor, shift), labels, at_label)
    return reduced, stats, g


def _reads_stats(P: _Prepared, opts: Options) -> bool:
    """Whether the logits' gradient reads the row statistics other than through
    ``softmax_affine``: for the z-loss and for probability targets."""
    return not is_zero(opts.z_loss) or not P.integer


def _forward(
    P: _Prepared, opts: Options, stats: bool = True, keep: Any = None, **scratch: bool
) -> tuple[Any, Any, Any, Any]:
    """:func:`forward` on prepared inputs, with the statistics as ``(m, lse_rel)`` (without
    ``stats``, whatever the kernels' ``softmax_affine`` reads in their place: see
    :class:`~smoothloss.backends._base.Kernels`)."""
    xp, x, w = P.xp, P.x, P.w
    # Σ_c w_c (lse - x_c) for the smoothing term, from the same pass where the kernel has one
    # and lse - x_y at each label, off the same pass where the kernel has one
    m, lse_rel, sum_nll, nll_y = P.kernels.log_softmax_stats(
        x, w, P.sum_w if P.integer and P.smoothed else None, P.y if P.integer else None, stats=stats,
        **({} if keep is None else {"keep": keep}), **scratch,
    )

    # a mean over a known, non-zero number of unweighted, unmasked positions: its 1/count
    # is folded into the integer loss's coefficients, so that the reduction is a sum
    count = None
    if opts.reduction == "mean" and P.integer and w is None and P.valid is None:
        count = known_count(nll_y.shape)
    pre = 1.0 if count is None else 1.0 / count
    if P.integer:
        loss = integer_loss(
            nll_y, sum_nll, on=P.on, off=P.off, w_y=P.w_y, sum_w=P.sum_w, kl=opts.kl, scale=pre,
            add_scaled=P.kernels.add_scaled,
        )
    else:
        q = P.soft_q()
        mass = q if w is None else q * w
        neg_log_p = shifted_nll(xp.expand_dims(m, axis=-1), xp.expand_dims(lse_rel, axis=-1), x)
        # 0·(-log 0) is 0: a class with no target mass may have a -inf logit (a mask)
        loss = xp.sum(xp.where(mass == 0.0, 0.0, mass * neg_log_p), axis=-1)
        if opts.kl:
            positive = q > 0
            log_q = xp.log(xp.where(positive, q, 1.0))
            loss = loss + xp.sum(xp.where(positive, mass * log_q, 0.0), axis=-1)
    if not is_zero(opts.z_loss):
        lse = m + lse_rel
        loss = loss + (opts.z_loss * pre) * (lse * lse)
    if P.bad is not None:
        loss = xp.where(P.bad, xp.nan, loss)
    if P.valid is not None:
        loss = xp.where(P.valid, loss, 0.0)
    if count is not None:  # (scaled above)
        return xp.sum(loss), m, lse_rel, pre
    reduced, scale = reduce(xp, loss, opts.reduction, P.denominator(loss) if opts.reduction == "mean" else None)
    return reduced, m, lse_rel, scale


def backward(
    fw: Any, logits: Any, targets: Any, weight: Any, opts: Options, stats: Any, scale: Any, loss: Any, cotangent: Any,
    needs: tuple[bool, bool, bool] = (True, False, False),
) -> tuple[Any, Any, Any]:
    """Closed-form vector-Jacobian product: the gradients for (logits, targets, weight).

    With the per-class target mass a_c = w_c q_c and the per-position cotangent s
    (the incoming cotangent times the reduction's scale, 0 at ignored positions):

    * logits:  s·[(Σ_c a_c + 2·z·lse)·softmax - a], times 1 - tanh²(x/softcap) with softcap;
    * probability targets: s·(on-off)·w_c·(-log p_c [+ log q_c + 1 with kl]);
    * weight:  Σ_positions s·q_c·(-log p_c [+ log q_c with kl]), and for the mean over
      integer targets also -cotangent·loss·scale·#{valid positions of class c}.

    ``stats``, ``scale`` and ``loss`` come from :func:`forward`; entries of ``needs`` that
    are False give None. One exp pass over the logits; nothing of size B×K is saved.
    A position with an unchecked (traced) label outside [0, K) gets a NaN row.
    """
    P = _Prepared(fw, logits, targets, weight, opts)
    return _backward(P, opts, *split_stats(stats), scale, loss, cotangent, needs)


def _backward(
    P: _Prepared, opts: Options, m: Any, lse_rel: Any, scale: Any, loss: Any, cotangent: Any,
    needs: tuple[bool, bool, bool],
) -> tuple[Any, Any, Any]:
    """:func:`backward` on prepared inputs, with the statistics as ``(m, lse_rel)``."""
    xp, x, w, K = P.xp, P.x, P.w, P.K
    kernels = P.kernels
    lse = None if is_zero(opts.z_loss) else m + lse_rel
    s, s_k = _position_scale(P, scale, cotangent)

    hit = None
    g_logits = g_targets = g_weight = None

    if needs[0]:
        if P.integer:
            coef, shift, at_label = _integer_logit_terms(P, opts, lse, s, s_k)
            g = kernels.softmax_affine(x, (m, lse_rel), coef, shift)
            g = kernels.add_at_labels(g, P.y, at_label)
        else:
            q = P.soft_q()
            mass = q if w is None else q * w
            coef = xp.sum(mass, axis=-1)
            if not is_zero(opts.z_loss):
                coef = coef + 2.0 * opts.z_loss * lse
            g = kernels.softmax_affine(x, (m, lse_rel), xp.expand_dims(coef, axis=-1) * s_k, mass * s_k)
        g = soft_cap_grad(g, P.capped)
        g_logits = P.to_layout(g, P.in_dtype)

    if needs[1] or needs[2]:
        neg_log_p = shifted_nll(xp.expand_dims(m, axis=-1), xp.expand_dims(lse_rel, axis=-1), x)
        hit = P.hit() if P.integer else None

    if needs[1] and not P.integer:
        q = P.soft_q()
        d = neg_log_p
        if opts.kl:
            positive = q > 0
            d = d + xp.where(positive, xp.log(xp.where(positive, q, 1.0)) + 1.0, 0.0)
        d = d * (P.hard * s_k)
        if w is not None:
            d = d * w
        g_targets = P.to_layout(d, P.targets_dtype)

    if needs[2] and w is not None:
        q = P.soft_q() if not P.integer else xp.astype(hit, P.cdtype) * P.hard + P.off
        b = xp.where(q == 0.0, 0.0, q * neg_log_p)  # a masked (-inf) class with no target mass: 0
        if opts.kl:
            positive = q > 0
            b = b + xp.where(positive, q * xp.log(xp.where(positive, q, 1.0)), 0.0)
        g_w = xp.sum(xp.reshape(b * s_k, (-1, K)), axis=0)
        if opts.reduction == "mean" and P.integer:
            counted = xp.astype(hit, P.cdtype)
            if P.valid is not None:
                counted = counted * xp.expand_dims(xp.astype(P.valid, P.cdtype), axis=-1)
            counts = xp.sum(xp.reshape(counted, (-1, K)), axis=0)
            g_w = g_w - counts * (cotangent * loss * scale)
        g_weight = g_w if g_w.dtype == P.weight_dtype else xp.astype(g_w, P.weight_dtype)
    return g_logits, g_targets, g_weight


def _position_scale(P: _Prepared, scale: Any, cotangent: Any) -> tuple[Any, Any]:
    """``(s, s_k)``: each position's cotangent times the reduction's scale (0 at ignored
    positions, NaN at unchecked out-of-range labels) in the compute dtype, and the same
    with a trailing class axis to broadcast against the logits."""
    xp = P.xp
    s = cotangent * scale
    if P.valid is not None:
        s = xp.astype(P.valid, P.cdtype) * s
    if P.bad is not None:
        s = xp.where(P.bad, xp.nan, s if not isinstance(s, float) else xp.zeros_like(P.bad, dtype=P.cdtype) + s)
    if not isinstance(s, float) and s.dtype != P.cdtype:
        s = xp.astype(s, P.cdtype)
    return s, xp.expand_dims(s, axis=-1) if getattr(s, "ndim", 0) > 0 else s


def _integer_logit_terms(P: _Prepared, opts: Options, lse: Any, s: Any, s_k: Any) -> tuple[Any, Any, Any]:
    """``(coef, shift, at_label)`` of the integer-label logits' gradient
    ``coef·softmax - shift``, plus ``at_label`` at each position's label."""
    xp, w = P.xp, P.w
    row, on_mass = integer_grad_coefficients(lse, s, on=P.on, off=P.off, w_y=P.w_y, sum_w=P.sum_w, z_loss=opts.z_loss)
    coef = xp.expand_dims(row, axis=-1) if getattr(row, "ndim", 0) > 0 else row
    shift = (w * P.off if w is not None else P.off) * s_k if P.smoothed else 0.0
    return coef, shift, -on_mass


def exp_grad_terms(
    fw: Any, e: Any, targets: Any, weight: Any, opts: Options, stats: Any, scale: Any, cotangent: Any
) -> tuple[Any, Any, Any, Any]:
    """The integer-label logits' gradient from ``e = exp(x - m)``, the forward's
    exponentials (``m`` the row maxima of ``stats``; logits in the compute dtype, no
    softcap), as ``(factor, shift, labels, at_label)``: the gradient is
    ``e·factor - shift`` (factor per position, with a trailing class axis) plus
    ``at_label`` at each position's label (``labels``: in [0, K)). So a caller can make
    it in e's place, without a second exp pass over the logits."""
    P = _Prepared(fw, e, targets, weight, opts)  # (e stands in for the logits: only its shape and dtype are read)
    xp = P.xp
    m, lse_rel = split_stats(stats)
    s, s_k = _position_scale(P, scale, cotangent)
    coef, shift, at_label = _integer_logit_terms(P, opts, None if is_zero(opts.z_loss) else m + lse_rel, s, s_k)
    # softmax = exp(x - m - lse_rel) = e·exp(-lse_rel)
    return xp.expand_dims(xp.exp(-lse_rel), axis=-1) * coef, shift, P.y, at_label


def jvp(
    fw: Any, logits: Any, targets: Any, weight: Any, opts: Options, tangents: tuple[Any, Any, Any]
) -> tuple[Any, Any]:
    """``(loss, loss_tangent)``: the loss and its forward-mode derivative along the
    tangents of (logits, targets, weight) (None: no tangent), from the closed form.

    Each position's loss depends on its own row of logits and targets only, so its
    tangent is ``Σ_c G_c·t_c`` over the class axis, with G the gradient of the sum of
    the per-position losses (times the reduction's scale). A position's loss is linear
    in the class weights except through the mean's denominator, so the weight tangent
    is the loss with ``t_weight`` in place of ``weight`` (z-loss left out), and for the
    mean ``Σ_c dL/dw_c · t_c`` from :func:`backward`.
    """
    xp = fw.xp
    t_logits, t_targets, t_weight = tangents
    loss, stats, scale = forward(fw, logits, targets, weight, opts)
    floating = bool(xp.isdtype(targets.dtype, "real floating"))
    per_position = opts.reduction == "none"
    needs = (t_logits is not None, floating and t_targets is not None, not per_position and t_weight is not None)
    out = xp.zeros_like(loss)
    if any(needs):
        ones = xp.ones_like(loss) if per_position else 1.0
        grads = backward(fw, logits, targets, weight, opts, stats, scale, loss, ones, needs)
        for g, t in zip(grads[:2], (t_logits, t_targets)):
            if g is not None:
                gt = g * (t if t.dtype == g.dtype else xp.astype(t, g.dtype))
                gt = xp.sum(gt, axis=opts.axis) if per_position else xp.sum(gt)
                out = out + (gt if gt.dtype == out.dtype else xp.astype(gt, out.dtype))
        if grads[2] is not None:
            gt = xp.sum(grads[2] * t_weight)
            out = out + (gt if gt.dtype == out.dtype else xp.astype(gt, out.dtype))
    if per_position and t_weight is not None and weight is not None:
        linear, _, _ = forward(fw, logits, targets, t_weight, replace(opts, z_loss=0.0))
        out = out + (linear if linear.dtype == out.dtype else xp.astype(linear, out.dtype))
    return loss, out
