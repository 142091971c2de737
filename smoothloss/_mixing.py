"""Mixup and CutMix on any Array-API backend: soft targets, image mixing, the CutMix
boxes and a mixed cross-entropy without a B×K target.

Each example i is mixed with a partner ``index[i]``; by default ``index[i] = B-1-i``
(timm's ``flip(0)``), so an odd batch's middle example is its own partner and comes
out as it went in (up to rounding). With λ the share of the example itself:

* mixup (blend): ``x̃_i = λ_i·x_i + (1-λ_i)·x_index[i]``
* cutmix (paste): ``x̃_i = x_index[i]`` inside the box (y0, y1, x0, x1), ``x_i`` outside;
  λ is then the share of the image outside the box
* targets: ``ỹ_i = λ_i·q(y_i) + (1-λ_i)·q(y_index[i])`` with the smoothed one-hot
  ``q(y) = (1-ε)·onehot(y) + ε/K`` (timm's ``mixup_target``)

The sampler (:class:`smoothloss.Mixup`, in :mod:`smoothloss._mixup`) draws λ, the boxes
below and the cutmix switch on the host. :func:`mix_images`, :func:`mixup_target` and
:func:`mixup_cross_entropy` take those parameters as Python numbers or arrays (also
traced ones: under ``jax.jit`` and ``tf.function`` the boxes become masks compared
against ``arange``, with no data-dependent shape and no in-place write).

References:
    Zhang et al., "mixup: Beyond Empirical Risk Minimization" (2018);
    Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features" (2019); timm ``timm/data/mixup.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from smoothloss import _options, _validation as V
from smoothloss._formulas import reduce, smoothing_coefficients
from smoothloss._losses import cross_entropy
from smoothloss._targets import smooth_labels
from smoothloss.backends import bind, framework

__all__ = [
    "BOX_RULES", "LAYOUTS", "cutmix_bbox_and_lam", "mix_images", "mixup_cross_entropy", "mixup_target", "rand_bbox",
    "rand_bbox_minmax",
]

LAYOUTS = ("NCHW", "NHWC")


# ----------------------------------------------------------------------------- helpers
def _host_param(value: Any, like: Any) -> Any:
    """A mixing parameter (lam, box, cutmix, index) made usable next to ``like``.

    Python numbers stay as they are and NumPy scalars become Python numbers. NumPy
    arrays (what :meth:`smoothloss.Mixup.sample` returns) move into ``like``'s
    namespace, on its device. An array of ``like``'s own framework passes through; one
    of a third framework raises ``TypeError``.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    fw = framework(like)
    if isinstance(value, np.ndarray) and fw.name != "numpy":
        return fw.xp.asarray(value, device=fw.device(like))
    _, (_, value) = bind(like, value)  # raises when two frameworks are mixed
    return value


def _is_array(value: Any) -> bool:
    return value is not None and not isinstance(value, (bool, int, float))


def _check_lam_array(fw: Any, lam: Any, batch: int) -> None:
    """An array λ: floating, 0-d or one entry per example ((B,) or timm's (B, 1))."""
    xp = fw.xp
    if not V.is_floating(xp, lam.dtype):
        raise TypeError(f"lam must be a float in [0, 1] or a floating array, got dtype {lam.dtype}")
    if lam.ndim != 0 and tuple(lam.shape) not in ((batch,), (batch, 1)):
        raise ValueError(
            f"lam must be a scalar or have one entry per example, shape ({batch},) or "
            f"({batch}, 1), got {tuple(lam.shape)}"
        )
    if fw.is_concrete(lam) and math.prod(lam.shape) and bool(xp.any((lam < 0) | (lam > 1))):
        raise ValueError(
            f"lam must lie in [0, 1]; found values in [{float(xp.min(lam))}, {float(xp.max(lam))}]"
        )


def _lam(fw: Any, lam: Any, batch: int) -> Any:
    """Validated λ: a Python float, or an array (checked; values only eagerly)."""
    if lam is None:
        raise ValueError("lam is required: the share λ of each example itself")
    if not _is_array(lam):
        return V.check_smoothing(lam, "lam")
    _check_lam_array(fw, lam, batch)
    return lam


def _per_example(xp: Any, lam: Any, ndim: int, dtype: Any) -> Any:
    """λ cast to ``dtype`` and shaped to broadcast against a batch of rank ``ndim``."""
    if isinstance(lam, float):
        return lam
    if lam.dtype != dtype:
        lam = xp.astype(lam, dtype)
    if lam.ndim == 0:
        return lam
    return xp.reshape(lam, (int(lam.shape[0]),) + (1,) * (ndim - 1))


def _partner_index(fw: Any, index: Any, batch: int, dev: Any) -> Any:
    """The partner of each example: ``index`` (checked) or timm's flip B-1-i."""
    xp = fw.xp
    if index is None:
        return xp.arange(batch - 1, -1, -1, device=dev)
    if not V.is_integer(xp, index.dtype):
        raise TypeError(f"index must hold integer example indices, got dtype {index.dtype}")
    if tuple(index.shape) != (batch,):
        raise ValueError(f"index must have shape ({batch},) (one partner per example), got {tuple(index.shape)}")
    if fw.is_concrete(index) and batch and bool(xp.any((index < 0) | (index >= batch))):
        raise ValueError(
            f"index must lie in [0, {batch}); found values in [{int(xp.min(index))}, {int(xp.max(index))}]"
        )
    return index


# ----------------------------------------------------------------------------- targets
def _dense_targets(xp: Any, targets: Any, num_classes: int, eps: float, dtype: Any) -> Any:
    """Dense (B, K) multi-label targets smoothed towards 0.5: ``t·(1-ε) + ε/2`` (timm's
    ``multi_label``), in ``dtype`` (default float32)."""
    if tuple(targets.shape[1:]) != (num_classes,) or targets.ndim != 2:
        raise ValueError(
            f"multi-label targets must be dense, shape (batch, num_classes={num_classes}), "
            f"got {tuple(targets.shape)}"
        )
    if not (V.is_floating(xp, targets.dtype) or V.is_integer(xp, targets.dtype) or xp.isdtype(targets.dtype, "bool")):
        raise TypeError(f"multi-label targets must be real or boolean, got dtype {targets.dtype}")
    dtype = xp.float32 if dtype is None else dtype
    return xp.astype(targets, dtype) * (1.0 - eps) + 0.5 * eps


def _check_class_labels(xp: Any, labels: Any, fn: str, hint: str) -> None:
    """Integer class labels with a batch axis, or a TypeError / ValueError naming ``fn``."""
    if not V.is_integer(xp, labels.dtype):
        raise TypeError(f"{fn} needs integer class labels, got dtype {labels.dtype}; {hint}")
    if labels.ndim == 0:
        raise ValueError("labels must have a batch axis, got a scalar")


def mixup_target(
    labels: Any,
    num_classes: int,
    *,
    lam: Any = 1.0,
    label_smoothing: float | None = None,
    index: Any = None,
    dtype: Any = None,
    smoothing: float | None = None,
    multi_label: bool = False,
) -> Any:
    """Mixed, label-smoothed soft targets (timm's ``mixup_target``).

    Each label is smoothed first, ``q(y) = (1-ε)·onehot(y) + ε/K``, then mixed with its
    partner's: ``ỹ_i = λ_i·q(y_i) + (1-λ_i)·q(y_index[i])``.

    With ``multi_label=True`` (timm 1.0.31's ``multi_label``) the labels are already dense
    (B, K) targets, multi-hot or soft, of any real or boolean dtype; each entry is
    smoothed on its own towards 0.5, ``q(t) = (1-ε)·t + ε/2`` (a per-label binary
    target, as for :func:`~smoothloss.binary_cross_entropy`), then mixed in the same way.

    Args:
        labels: integer class indices of shape (B, ...) (the batch first), or with
            ``multi_label`` dense targets of shape (B, K).
        num_classes: K.
        lam: λ, a float in [0, 1] for the whole batch or an array with one entry per
            example, shape (B,) or (B, 1) (may be traced under jit).
        label_smoothing: ε in [0, 1] (default 0).
        index: integer array (B,): the partner of each example. None pairs example i
            with B-1-i (timm's flip), so an odd batch's middle example keeps its own
            target (up to rounding).
        dtype: floating dtype of the result (default float32).
        smoothing: the former name of ``label_smoothing``; accepted with a
            ``DeprecationWarning``.
        multi_label: the labels are dense (B, K) targets, smoothed towards 0.5.

    Returns:
        Targets of shape ``labels.shape + (K,)`` (with ``multi_label``: (B, K)) on the
        labels' device.

    Example:
        >>> import numpy as np, smoothloss
        >>> smoothloss.mixup_target(np.array([0, 2]), 3, lam=0.75).tolist()
        [[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]]
        >>> multi_hot = np.array([[1, 1, 0], [0, 0, 1]])
        >>> t = smoothloss.mixup_target(multi_hot, 3, lam=0.75, label_smoothing=0.2, multi_label=True, dtype=np.float64)
        >>> np.round(t, 6).tolist()  # q = 0.8·t + 0.1, then 0.75·q + 0.25·q[::-1]
        [[0.7, 0.7, 0.3], [0.3, 0.3, 0.7]]
    """
    fw, (labels,) = bind(labels)
    xp = fw.xp
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    eps = V.check_smoothing(V.renamed_smoothing(label_smoothing, smoothing))
    if multi_label:
        own = _dense_targets(xp, labels, num_classes, eps, dtype)
    else:
        _check_class_labels(xp, labels, "mixup_target", "pass multi_label=True for dense (B, K) targets, or mix "
                            "soft targets with lam·t + (1-lam)·t[index] directly")
        own = smooth_labels(labels, num_classes, label_smoothing=eps, dtype=dtype)
    batch = int(labels.shape[0])
    lam = _lam(fw, _host_param(lam, labels), batch)
    index = _partner_index(fw, _host_param(index, labels), batch, fw.device(labels))
    if isinstance(lam, float) and lam == 1.0:
        return own
    partner = xp.take(own, index, axis=0)
    lam = _per_example(xp, lam, own.ndim, own.dtype)
    return own * lam + partner * (1.0 - lam)


# ----------------------------------------------------------------------------- images
def _box_parts(xp: Any, box: Any, like: Any, batch: int) -> list[Any]:
    """(y0, y1, x0, x1), each a Python int or an integer array (0-d or (B,))."""
    if isinstance(box, (tuple, list)):
        if len(box) != 4:
            raise ValueError(f"box must be (y0, y1, x0, x1), got {len(box)} entries")
        parts = [_host_param(b, like) for b in box]
    else:
        box = _host_param(box, like)
        if box.ndim not in (1, 2) or int(box.shape[-1]) != 4:
            raise ValueError(
                f"a box array must have shape (4,) or (B, 4) holding (y0, y1, x0, x1), got {tuple(box.shape)}"
            )
        parts = [box[..., k] for k in range(4)]
    arrays = [p for p in parts if _is_array(p)]
    for p in parts:
        if isinstance(p, bool) or (not _is_array(p) and not isinstance(p, int)):
            raise TypeError(f"box entries must be integers, got {p!r}")
    if arrays:
        dtype = arrays[0].dtype
        for p in arrays:
            if not V.is_integer(xp, p.dtype):
                raise TypeError(f"box entries must be integers, got dtype {p.dtype}")
            if p.ndim != 0 and tuple(p.shape) != (batch,):
                raise ValueError(f"each box entry must be a scalar or have shape ({batch},), got {tuple(p.shape)}")
        parts = [p if not _is_array(p) or p.dtype == dtype else xp.astype(p, dtype) for p in parts]
    return parts


def _interval(xp: Any, lo: Any, hi: Any, size: int, dev: Any) -> Any:
    """Boolean (size,) or (B, size): lo <= position < hi."""
    ref = lo if _is_array(lo) else hi if _is_array(hi) else None
    if ref is None:
        pos = xp.arange(size, device=dev)
    else:
        pos = xp.arange(size, dtype=ref.dtype, device=dev)
    if _is_array(lo) and lo.ndim == 1:
        lo = xp.expand_dims(lo, axis=-1)
    if _is_array(hi) and hi.ndim == 1:
        hi = xp.expand_dims(hi, axis=-1)
    return (pos >= lo) & (pos < hi)


def _box_mask(fw: Any, x: Any, box: Any, layout: str) -> Any:
    """Boolean mask of the box, broadcastable against the (B, C, H, W)/(B, H, W, C) batch."""
    xp = fw.xp
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    H, W = int(x.shape[h_axis]), int(x.shape[w_axis])
    y0, y1, x0, x1 = _box_parts(xp, box, x, int(x.shape[0]))
    dev = fw.device(x)
    rows = xp.expand_dims(_interval(xp, y0, y1, H, dev), axis=-1)  # (..., H, 1)
    cols = xp.expand_dims(_interval(xp, x0, x1, W, dev), axis=-2)  # (..., 1, W)
    inside = rows & cols  # (H, W) or (B, H, W)
    if layout == "NHWC":
        return xp.expand_dims(inside, axis=-1)
    return xp.expand_dims(inside, axis=1) if inside.ndim == 3 else inside


def mix_images(
    x: Any, *, lam: Any = None, index: Any = None, box: Any = None, cutmix: Any = None, layout: str = "NCHW"
) -> Any:
    """Mixup (blend) or CutMix (paste a box) of each example with its partner.

    With the partner ``p_i = x[index[i]]`` (default ``index[i] = B-1-i``):

    * ``box`` None: ``x̃_i = λ_i·x_i + (1-λ_i)·p_i``
    * ``box`` given: ``x̃_i = p_i`` inside rows [y0, y1) and columns [x0, x1), ``x_i``
      elsewhere; ``lam`` is not used
    * ``box`` and a boolean ``cutmix`` (per example) given: the paste where cutmix is
      true, the blend elsewhere (as :class:`smoothloss.Mixup` does per example or pair)

    Every parameter may be a Python number, a NumPy array (moved to ``x``'s device)
    or an array of ``x``'s framework, traced ones included: the box becomes a mask
    from comparisons with ``arange``, so the call has no data-dependent shape, works
    under ``jax.jit`` and ``tf.function``, and never writes into ``x``.

    Args:
        x: images, (B, C, H, W) for ``layout="NCHW"`` or (B, H, W, C) for ``"NHWC"``.
            Blending needs a floating dtype; without a box any rank (B, ...) works.
        lam: λ, the share of each example itself: a float in [0, 1], or an array of
            shape (B,) or (B, 1). Required for blending.
        index: integer array (B,): each example's partner. None: timm's flip.
        box: (y0, y1, x0, x1) as four ints or arrays (each 0-d or (B,)), or an integer
            array of shape (4,) or (B, 4); boxes lie within [0, H] × [0, W].
        cutmix: None (paste wherever a box is given), a bool, or a boolean array (B,)
            choosing paste (True) or blend (False) per example.
        layout: ``"NCHW"`` or ``"NHWC"``.

    Returns:
        A new array of ``x``'s namespace, dtype and device.

    Example:
        >>> import numpy as np, smoothloss
        >>> x = np.arange(2.0).reshape(2, 1, 1, 1)
        >>> smoothloss.mix_images(x, lam=0.75).ravel().tolist()
        [0.25, 0.75]
        >>> x = np.stack([np.zeros((1, 2, 2)), np.ones((1, 2, 2))])
        >>> smoothloss.mix_images(x, box=(0, 1, 0, 2))[0, 0].tolist()
        [[1.0, 1.0], [0.0, 0.0]]
    """
    fw, (x,) = bind(x)
    xp = fw.xp
    layout = V.check_choice("layout", layout, LAYOUTS)
    if x.ndim == 0:
        raise ValueError("x must have a batch axis, got a scalar")
    batch = int(x.shape[0])
    cutmix = _host_param(cutmix, x)
    if cutmix is not None and not isinstance(cutmix, bool):
        if not xp.isdtype(cutmix.dtype, "bool"):
            raise TypeError(f"cutmix must be a bool or a boolean array, got dtype {cutmix.dtype}")
        if cutmix.ndim != 0 and tuple(cutmix.shape) != (batch,):
            raise ValueError(f"cutmix must be a bool or have shape ({batch},), got {tuple(cutmix.shape)}")
    paste = box is not None and cutmix is not False
    blend = box is None or (cutmix is not None and cutmix is not True)
    if paste and x.ndim != 4:
        raise ValueError(
            f"pasting a box needs a batch of images of rank 4 ({layout}), got shape {tuple(x.shape)}"
        )
    partner = xp.take(x, _partner_index(fw, _host_param(index, x), batch, fw.device(x)), axis=0)

    blended = None
    if blend:
        if not V.is_floating(xp, x.dtype):
            raise TypeError(f"blending needs floating images, got dtype {x.dtype}; cast them first")
        lam = _per_example(xp, _lam(fw, _host_param(lam, x), batch), x.ndim, x.dtype)
        blended = x * lam + partner * (1.0 - lam)
    if not paste:
        return blended

    inside = _box_mask(fw, x, box, layout)
    pasted = xp.where(inside, partner, x)
    if blended is None:
        return pasted
    cut = cutmix if cutmix.ndim == 0 else xp.reshape(cutmix, (batch, 1, 1, 1))
    return xp.where(cut, pasted, blended)


# ----------------------------------------------------------------------------- boxes
#: The CutMix box rules: timm's since 1.0.29 (the default), and timm's up to 1.0.28.
BOX_RULES = ("timm>=1.0.29", "timm<=1.0.28")


def _check_box_rule(box_rule: Any) -> bool:
    """True for timm's boxes up to 1.0.28, False for the current ones."""
    return V.check_choice("box_rule", box_rule, BOX_RULES) == "timm<=1.0.28"


def rand_bbox(
    image_shape: tuple[int, ...], lam: float, *, rng: Any, margin: float = 0.0, count: int | None = None,
    box_rule: str = "timm>=1.0.29",
) -> tuple[Any, Any, Any, Any]:
    """A CutMix box for λ (timm's ``rand_bbox``), drawn from ``rng``.

    The cut is ``int(H·√(1-λ))`` × ``int(W·√(1-λ))`` and its centre (cy, cx) is drawn
    uniformly (``rng.integers``, rows first) from ``[m_y, H - m_y)`` × ``[m_x, W - m_x)``
    with ``m = int(margin·cut)``. The box is then clipped to the image, so it can be
    smaller than the cut near a border:

    * ``box_rule="timm>=1.0.29"`` (default): rows ``[cy - cut_h//2, cy - cut_h//2 + cut_h)``,
      columns likewise: an unclipped box is exactly the cut.
    * ``box_rule="timm<=1.0.28"``: rows ``[cy - cut_h//2, cy + cut_h//2)``, columns likewise:
      an odd cut loses one row or column.

    Both rules make the same draws from ``rng``.

    Args:
        image_shape: a shape whose last two entries are (H, W).
        lam: λ in [0, 1].
        rng: a ``numpy.random.Generator``.
        margin: fraction of the cut kept between the centre and the border.
        count: number of boxes (None: one, as scalars).
        box_rule: ``"timm>=1.0.29"`` or ``"timm<=1.0.28"`` (see above).

    Returns:
        (y0, y1, x0, x1) as NumPy integers (arrays when ``count`` is given).

    Example:
        >>> import numpy as np
        >>> from smoothloss._mixing import rand_bbox
        >>> y0, y1, x0, x1 = rand_bbox((32, 32), 0.75, rng=np.random.default_rng(0))
        >>> int(y1 - y0) <= 16 and int(x1 - x0) <= 16
        True
    """
    legacy = _check_box_rule(box_rule)
    ratio = np.sqrt(1 - lam)
    img_h, img_w = image_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    margin_y, margin_x = int(margin * cut_h), int(margin * cut_w)
    cy = rng.integers(0 + margin_y, img_h - margin_y, size=count)
    cx = rng.integers(0 + margin_x, img_w - margin_x, size=count)
    # before the centre: cut//2; from the centre on: the rest of the cut (or cut//2 again)
    below_h, below_w = cut_h // 2, cut_w // 2
    above_h, above_w = (below_h, below_w) if legacy else (cut_h - below_h, cut_w - below_w)
    y0 = np.clip(cy - below_h, 0, img_h)
    y1 = np.clip(cy + above_h, 0, img_h)
    x0 = np.clip(cx - below_w, 0, img_w)
    x1 = np.clip(cx + above_w, 0, img_w)
    return y0, y1, x0, x1


def rand_bbox_minmax(
    image_shape: tuple[int, ...], minmax: tuple[float, float], *, rng: Any, count: int | None = None,
    box_rule: str = "timm>=1.0.29",
) -> tuple[Any, Any, Any, Any]:
    """A rectangular CutMix box with sides a uniform fraction of the image (timm's
    ``rand_bbox_minmax``): height in ``[int(H·min), int(H·max))``, width likewise, then
    a uniform top-left corner such that the box lies inside the image.

    The corner row is drawn from ``[0, H - cut_h]`` with ``box_rule="timm>=1.0.29"``
    (default), so the box may touch the bottom border, and from ``[0, H - cut_h)`` with
    ``"timm<=1.0.28"`` (it never does); columns likewise. The draws are, in order,
    cut_h, cut_w, y0, x0.

    Example:
        >>> import numpy as np
        >>> from smoothloss._mixing import rand_bbox_minmax
        >>> y0, y1, x0, x1 = rand_bbox_minmax((10, 10), (0.2, 0.8), rng=np.random.default_rng(0))
        >>> 2 <= int(y1 - y0) < 8 and 0 <= int(y0) and int(y1) <= 10
        True
    """
    reach = 0 if _check_box_rule(box_rule) else 1
    lo, hi = minmax
    img_h, img_w = image_shape[-2:]
    for side, n in (("H", img_h), ("W", img_w)):
        if int(n * lo) >= int(n * hi):
            raise ValueError(
                f"cutmix_minmax={tuple(minmax)} leaves no box size for {side}={n}: "
                f"int({n}·{lo}) = {int(n * lo)} must be < int({n}·{hi}) = {int(n * hi)}"
            )
    cut_h = rng.integers(int(img_h * lo), int(img_h * hi), size=count)
    cut_w = rng.integers(int(img_w * lo), int(img_w * hi), size=count)
    y0 = rng.integers(0, img_h - cut_h + reach, size=count)
    x0 = rng.integers(0, img_w - cut_w + reach, size=count)
    return y0, y0 + cut_h, x0, x0 + cut_w


def cutmix_bbox_and_lam(
    image_shape: tuple[int, ...], lam: float, *, rng: Any, ratio_minmax: tuple[float, float] | None = None,
    correct_lam: bool = True, count: int | None = None, box_rule: str = "timm>=1.0.29",
) -> tuple[tuple[Any, Any, Any, Any], Any]:
    """A CutMix box and its λ (timm's ``cutmix_bbox_and_lam``).

    The box comes from :func:`rand_bbox_minmax` when ``ratio_minmax`` is given, else
    from :func:`rand_bbox`, with ``box_rule`` passed on. With ``correct_lam`` (or
    ``ratio_minmax``) λ becomes the share of the image outside the clipped box,
    ``1 - (y1-y0)(x1-x0)/(H·W)``; otherwise the drawn λ is kept.

    Example:
        >>> import numpy as np
        >>> from smoothloss._mixing import cutmix_bbox_and_lam
        >>> (y0, y1, x0, x1), lam = cutmix_bbox_and_lam((8, 8), 0.5, rng=np.random.default_rng(1))
        >>> bool(lam == 1 - (y1 - y0) * (x1 - x0) / 64)
        True
    """
    if ratio_minmax is not None:
        y0, y1, x0, x1 = rand_bbox_minmax(image_shape, ratio_minmax, rng=rng, count=count, box_rule=box_rule)
    else:
        y0, y1, x0, x1 = rand_bbox(image_shape, lam, rng=rng, count=count, box_rule=box_rule)
    if correct_lam or ratio_minmax is not None:
        area = (y1 - y0) * (x1 - x0)
        lam = 1.0 - area / float(image_shape[-2] * image_shape[-1])
    return (y0, y1, x0, x1), lam


# ----------------------------------------------------------------------------- loss
def _xlogx(xp: Any, v: Any) -> Any:
    if isinstance(v, float):
        return v * math.log(v) if v > 0 else 0.0
    positive = v > 0
    return xp.where(positive, v * xp.log(xp.where(positive, v, 1.0)), 0.0)


def _mixture_negentropy(
    xp: Any, labels: Any, partner: Any, lam: Any, K: int, eps: float, convention: str, weight: Any, dtype: Any
) -> Any:
    """Σ_c w_c q_c log q_c of the mixed target q = λ·q(y) + (1-λ)·q(y'), per position.

    q has at most two entries that differ from ``off``: at y (mass ``off + hard·(λ +
    (1-λ)·[y = y'])``) and at y' ≠ y (``off + hard·(1-λ)``), so O(positions) work.
    """
    on, off = smoothing_coefficients(eps, K, convention)
    hard = on - off
    same = xp.astype(labels == partner, dtype)
    at_y = (lam + (1.0 - lam) * same) * hard + off
    at_partner = (1.0 - lam) * hard + off
    base = _xlogx(xp, off)
    if weight is None:
        w_y = w_p = 1.0
        total = float(K)
    else:
        w = xp.astype(weight, dtype) if weight.dtype != dtype else weight
        w_y = xp.reshape(xp.take(w, xp.reshape(labels, (-1,)), axis=0), labels.shape)
        w_p = xp.reshape(xp.take(w, xp.reshape(partner, (-1,)), axis=0), labels.shape)
        total = xp.sum(w)
    return (
        total * base
        + w_y * (_xlogx(xp, at_y) - base)
        + (1.0 - same) * (w_p * (_xlogx(xp, at_partner) - base))
    )


def mixup_cross_entropy(
    logits: Any,
    labels: Any,
    *,
    lam: Any,
    index: Any = None,
    label_smoothing: float = 0.0,
    axis: int = -1,
    convention: str = "uniform",
    weight: Any = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> Any:
    r"""Cross-entropy against mixed targets, from the labels, without a B×K target.

    ``ℓ_i = λ_i·L(x_i, y_i) + (1-λ_i)·L(x_i, y_index[i])`` where L is
    :func:`~smoothloss.cross_entropy` per position with the same smoothing, weights,
    z-loss and softcap. Since the smoothed target is linear in the label, this equals
    ``cross_entropy(logits, mixup_target(labels, K, lam=λ, label_smoothing=ε, index=index))``
    (the mean divides by the number of positions, as for soft targets), in value and
    gradient. Each of the two calls has the closed-form gradient, so nothing of size
    B×K is stored for the backward pass.

    Args:
        logits: floating logits, the classes along ``axis``, the batch first.
        labels: integer class indices (the logits' shape without ``axis``).
        lam: λ: a float in [0, 1] or an array with one entry per example, (B,) or
            (B, 1), e.g. from :meth:`smoothloss.Mixup.sample` (may be traced under jit).
        index: integer array (B,): each example's partner. None: timm's flip B-1-i.
        label_smoothing: ε in [0, 1].
        axis: the class axis, as in :func:`~smoothloss.cross_entropy`.
        convention: ``"uniform"`` or ``"others"``, as in :func:`~smoothloss.cross_entropy`.
        weight: per-class weights (K,), as in :func:`~smoothloss.cross_entropy`.
        z_loss: the ``lse²`` coefficient, as in :func:`~smoothloss.cross_entropy`.
        softcap: the logit soft cap, as in :func:`~smoothloss.cross_entropy`.
        reduction: ``"mean"`` (over positions), ``"sum"`` or ``"none"``.
        kl: subtract the entropy of the mixed target, so the minimum is 0.

    Returns:
        The loss, an array of the logits' namespace and device.

    Example:
        >>> import numpy as np, smoothloss
        >>> logits, labels = np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
        >>> a = smoothloss.mixup_cross_entropy(logits, labels, lam=0.7, label_smoothing=0.1)
        >>> t = smoothloss.mixup_target(labels, 2, lam=0.7, label_smoothing=0.1, dtype=np.float64)
        >>> b = smoothloss.cross_entropy(logits, t)
        >>> bool(np.isclose(a, b))
        True
    """
    fw, (logits, labels, weight) = bind(logits, labels, weight)
    xp = fw.xp
    reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
    eps = V.check_smoothing(label_smoothing)
    _check_class_labels(xp, labels, "mixup_cross_entropy", "for soft targets call cross_entropy(logits, targets)")
    labels = fw.index(labels)  # compared and gathered as integer values, whatever their dtype
    batch = int(labels.shape[0])
    # the declared options but the reduction (per position here) and kl (its entropy is the mixture's, below)
    options = {**_options.given(
        axis=axis, label_smoothing=label_smoothing, convention=convention, z_loss=z_loss,
        softcap=softcap,
    ), "label_smoothing": eps, "weight": weight}
    own = cross_entropy(logits, labels, reduction="none", **options)
    lam = _lam(fw, _host_param(lam, logits), batch)
    partner_labels = xp.take(labels, _partner_index(fw, _host_param(index, logits), batch, fw.device(labels)), axis=0)
    if isinstance(lam, float) and lam == 1.0:
        loss = own
    else:
        other = cross_entropy(logits, partner_labels, reduction="none", **options)
        lam = _per_example(xp, lam, own.ndim, own.dtype)
        loss = own * lam + other * (1.0 - lam)
    if kl:
        K = int(logits.shape[V.normalize_axis(axis, logits.ndim)])
        lam_k = _per_example(xp, lam, own.ndim, own.dtype)
        loss = loss + _mixture_negentropy(
            xp, labels, partner_labels, lam_k, K, eps, convention, weight, own.dtype
        )
    return reduce(xp, loss, reduction)[0]
