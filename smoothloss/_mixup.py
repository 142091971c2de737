"""The Mixup / CutMix sampler: draws λ, boxes and the cutmix switch on the host.

:class:`Mixup` draws the mixing parameters of a batch from a NumPy ``Generator``, in
the order timm's ``Mixup`` draws them from the global NumPy state, and mixes with the
formulas of :mod:`smoothloss._mixing` (:func:`~smoothloss.mix_images`,
:func:`~smoothloss.mixup_target`); :meth:`Mixup.sample` hands the draw out for use inside
jit. :class:`FastCollateMixup` does the same inside a DataLoader's collate function, on
uint8 images.

The sampler's options are declared once, in :class:`MixupOptions`: each one's name,
default and check. The constructors (:class:`Mixup`'s and the timm drop-ins' in
:mod:`smoothloss.torch`) keep explicit keywords, because users read them, and hand them
on with :func:`options_of`; a test checks that their names and defaults are the
declaration's. Adding an option: a field here, and the keyword in those signatures.
"""

from __future__ import annotations

import copy
import operator
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from smoothloss import _validation as V
from smoothloss._mixing import LAYOUTS, _check_box_rule, cutmix_bbox_and_lam, mix_images, mixup_target
from smoothloss.backends import bind

__all__ = ["FastCollateMixup", "MODES", "Mixup", "MixupOptions", "MixupParams", "options_of"]

MODES = ("batch", "pair", "elem")


# ----------------------------------------------------------------------------- options
def _check_minmax(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2:
        raise ValueError(f"{name} must be (min, max), got {value!r}")
    lo, hi = (float(v) for v in value)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= min < max <= 1, got {value!r}")
    return lo, hi


def _check_mode(value: Any, name: str) -> str:
    return V.check_choice(name, value, MODES)


def _check_collate_mode(value: Any, name: str) -> str:
    return V.check_choice(name, value, MODES + ("half",))


def _check_num_classes(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_layout(value: Any, name: str) -> str:
    return V.check_choice(name, value, LAYOUTS)


def _check_box_rule_name(value: Any, name: str) -> str:
    _check_box_rule(value)
    return value


def _as_bool(value: Any, name: str) -> bool:
    return bool(value)


def _as_given(value: Any, name: str) -> Any:
    return value


def _option(default: Any, check: Callable[[Any, str], Any], *, attribute: str | None = None) -> Any:
    """A declared option: ``check(value, name)`` returns the normalised value or raises;
    the sampler keeps it as the attribute ``attribute`` (None: the option's name)."""
    return field(default=default, metadata={"check": check, "attribute": attribute})


@dataclass(frozen=True, eq=False)
class MixupOptions:
    """The options of :class:`Mixup`, checked: one field per option, with its default
    and its check (the meanings are in :class:`Mixup`'s docstring).

    Constructing it checks and normalises every option (numbers become floats,
    ``cutmix_minmax`` a tuple of two floats), then applies timm's rules across them:
    ``cutmix_minmax`` sets ``cutmix_alpha = 1``, and mixup and cutmix cannot both be
    off. ``seed`` is kept as given (NumPy checks it when the Generator is made).
    """

    mixup_alpha: float = _option(1.0, V.check_nonnegative)
    cutmix_alpha: float = _option(0.0, V.check_nonnegative)
    cutmix_minmax: tuple[float, float] | None = _option(None, _check_minmax)
    prob: float = _option(1.0, V.check_smoothing, attribute="mix_prob")  # timm's attribute name
    switch_prob: float = _option(0.5, V.check_smoothing)
    mode: str = _option("batch", _check_mode)
    correct_lam: bool = _option(True, _as_bool)
    label_smoothing: float = _option(0.1, V.check_smoothing)
    num_classes: int = _option(1000, _check_num_classes)
    seed: Any = _option(None, _as_given)
    layout: str = _option("NCHW", _check_layout)
    box_rule: str = _option("timm>=1.0.29", _check_box_rule_name)
    multi_label: bool = _option(False, _as_bool)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](getattr(self, f.name), f.name))
        if self.cutmix_minmax is not None:
            object.__setattr__(self, "cutmix_alpha", 1.0)  # as timm: λ ~ Beta(1, 1), replaced by the box area
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            raise ValueError("nothing to mix: set mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax")

    @classmethod
    def kept_as(cls) -> dict[str, str]:
        """The attribute the sampler keeps each option as, by option name: the same name,
        but ``prob`` as timm's ``mix_prob``; ``seed`` is not kept (the Generator made
        from it is)."""
        return {f.name: f.metadata["attribute"] or f.name for f in fields(cls) if f.name != "seed"}

    def attributes(self) -> dict[str, Any]:
        """The checked options by the sampler's attribute names (see :meth:`kept_as`)."""
        return {attribute: getattr(self, name) for name, attribute in self.kept_as().items()}


@dataclass(frozen=True, eq=False)
class _CollateOptions(MixupOptions):
    """The options of :class:`FastCollateMixup`: those of :class:`Mixup`, with one more
    mode, ``"half"``."""

    mode: str = _option("batch", _check_collate_mode)


def options_of(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The declared options among ``namespace``'s names (a constructor's ``locals()``),
    as keyword arguments to hand on."""
    return {f.name: namespace[f.name] for f in fields(MixupOptions) if f.name in namespace}


# ----------------------------------------------------------------------------- sampler
def _torch_worker_info() -> Any:
    """``torch.utils.data.get_worker_info()`` where torch's data package is already
    imported (in a DataLoader worker it always is), else None: smoothloss never imports
    torch itself."""
    data = sys.modules.get("torch.utils.data")
    get_worker_info = getattr(data, "get_worker_info", None)
    return None if get_worker_info is None else get_worker_info()


def _worker_generator(parent: np.random.Generator, worker_id: int, worker_seed: int) -> np.random.Generator:
    """The Generator of one DataLoader worker, derived without touching ``parent``.

    Entropy: 128 bits drawn from a copy of ``parent`` as the worker inherited it (the
    same state in every worker of one loader iterator, and a function of the seed);
    spawn key: the worker id and the loader's base seed (torch gives worker k the seed
    ``base_seed + k``, with ``base_seed`` drawn anew for each iterator from the
    DataLoader's ``generator`` or torch's global RNG).
    """
    words = copy.deepcopy(parent).integers(0, 2**32, size=4, dtype=np.uint64)
    base_seed = (int(worker_seed) - int(worker_id)) % 2**64
    seq = np.random.SeedSequence(entropy=[int(w) for w in words], spawn_key=(int(worker_id), base_seed))
    return np.random.Generator(np.random.PCG64(seq))


@dataclass(frozen=True, eq=False)
class MixupParams:
    """One draw of :class:`Mixup`, as NumPy values (pass them into a jitted step).

    Attributes:
        lam: λ after the cutmix correction: a float (``mode="batch"``) or a float32
            array (B,) (``"pair"``, ``"elem"``). 1 where nothing is mixed.
        box: int64 (y0, y1, x0, x1): shape (4,) for ``"batch"``, (B, 4) otherwise; zeros
            where no box is pasted.
        cutmix: whether the box is pasted (else the images are blended): a bool, or a
            boolean array (B,).
        index: int64 (B,): each example's partner, B-1-i.
    """

    lam: Any
    box: np.ndarray
    cutmix: Any
    index: np.ndarray


class Mixup:
    """Mixup and CutMix for a batch of images and integer labels, on any backend.

    timm's ``Mixup`` (as of timm 1.0.31, ``multi_label`` included) with the same options
    and the same draws, in the same order, from an explicit NumPy ``Generator`` instead
    of the global state; odd batches are allowed (the middle example pairs with itself)
    and the inputs are never modified.

    Per call, with probability ``prob`` (per batch, pair or example by ``mode``), λ is
    drawn from Beta(α, α): cutmix with probability ``switch_prob`` when both
    ``mixup_alpha`` and ``cutmix_alpha`` are > 0, else whichever is > 0. A cutmix box
    comes from :func:`rand_bbox` (or :func:`rand_bbox_minmax` with ``cutmix_minmax``,
    which forces ``cutmix_alpha = 1``) and λ is corrected to the pasted area when
    ``correct_lam`` (always with ``cutmix_minmax``). The targets are
    :func:`mixup_target` with ``label_smoothing``: from class indices (B,), or with
    ``multi_label`` from dense (B, K) targets (multi-hot or soft), each entry smoothed
    towards 0.5 as ``t·(1-ε) + ε/2`` before mixing.

    Args:
        mixup_alpha: α of mixup's Beta; mixup is on when > 0.
        cutmix_alpha: α of cutmix's Beta; cutmix is on when > 0.
        cutmix_minmax: (min, max) box side as a fraction of the image, or None.
        prob: probability of mixing a batch / pair / example.
        switch_prob: probability of cutmix instead of mixup when both are on.
        mode: ``"batch"`` (one draw), ``"pair"`` (one per pair i, B-1-i) or ``"elem"``.
        correct_lam: λ from the clipped box area instead of the drawn value.
        label_smoothing: ε of the targets.
        num_classes: K.
        seed: an int, None (fresh entropy) or a ``numpy.random.Generator`` to draw from.
        layout: ``"NCHW"`` or ``"NHWC"``: where :meth:`__call__` finds H and W.
        box_rule: the CutMix box formulas: ``"timm>=1.0.29"`` (default, timm's current
            ones) or ``"timm<=1.0.28"`` (timm's earlier ones, to reproduce older runs);
            see :func:`rand_bbox` and :func:`rand_bbox_minmax`. Both draw the same
            quantities in the same order; the boxes, and so the corrected λ, differ.
        multi_label: the labels are dense (B, K) targets (timm 1.0.31's
            ``multi_label``); the draws and the images are unchanged.

    Attributes:
        mixup_enabled: set to False to stop mixing (the targets are then only smoothed).
        rng: the ``numpy.random.Generator`` drawn from (in the main process).

    In ``torch.utils.data.DataLoader`` workers (e.g. mixing inside ``collate_fn``) a
    forked or unpickled copy would repeat the same draws in every worker. There, on its
    first draw, each worker derives its own Generator once (:class:`numpy.random.SeedSequence`)
    from ``rng``'s state as the worker received it, its worker id and the loader's base
    seed; ``rng`` itself is left alone. The workers' streams thus differ from each other
    and from one iterator (epoch) to the next (unless ``persistent_workers``, where
    each worker's stream just continues), and are reproduced by the same ``seed`` with
    the same torch seed (``torch.manual_seed`` or the DataLoader's ``generator``, which
    also drive its shuffling). Workers are recognised only where ``torch.utils.data``
    is imported; smoothloss does not import torch.

    Example:
        >>> import numpy as np, smoothloss
        >>> mix = smoothloss.Mixup(mixup_alpha=0.8, label_smoothing=0.1, num_classes=3, seed=0)
        >>> x, t = mix(np.zeros((4, 3, 8, 8), np.float32), np.array([0, 1, 2, 0]))
        >>> t.shape, bool(np.allclose(t.sum(-1), 1))
        ((4, 3), True)
    """

    _OPTIONS: ClassVar[type[MixupOptions]] = MixupOptions

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        seed: Any = None,
        layout: str = "NCHW",
        box_rule: str = "timm>=1.0.29",
        multi_label: bool = False,
    ) -> None:
        options = self._OPTIONS(**options_of(locals()))
        for name, value in options.attributes().items():
            setattr(self, name, value)
        self.rng = np.random.default_rng(options.seed)
        self.mixup_enabled = True
        self._worker_rng: Any = None
        self._worker_key: Any = None

    @property
    def box_rule(self) -> str:
        """The CutMix box rule, ``"timm>=1.0.29"`` or ``"timm<=1.0.28"`` (may be set, e.g.
        on the timm drop-in :class:`smoothloss.torch.Mixup`)."""
        return self._box_rule

    @box_rule.setter
    def box_rule(self, value: str) -> None:
        self._box_rule = _check_box_rule_name(value, "box_rule")

    def _generator(self) -> Any:
        """``rng``, or inside a torch DataLoader worker the worker's own Generator."""
        info = _torch_worker_info()
        if info is None or not isinstance(self.rng, np.random.Generator):
            return self.rng
        key = (info.id, info.seed, id(self.rng))
        if self._worker_key != key:
            self._worker_rng = _worker_generator(self.rng, info.id, info.seed)
            self._worker_key = key
        return self._worker_rng

    # -- draws (timm's order) ---------------------------------------------------
    def _params_per_elem(self, rng: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        lam = np.ones(n, dtype=np.float32)
        use_cutmix = np.zeros(n, dtype=bool)
        if self.mixup_enabled:
            ma, ca = self.mixup_alpha, self.cutmix_alpha
            if ma > 0.0 and ca > 0.0:
                use_cutmix = rng.random(n) < self.switch_prob
                lam_cut = rng.beta(ca, ca, size=n)
                lam_mix = np.where(use_cutmix, lam_cut, rng.beta(ma, ma, size=n))
            elif ma > 0.0:
                lam_mix = rng.beta(ma, ma, size=n)
            else:
                use_cutmix = np.ones(n, dtype=bool)
                lam_mix = rng.beta(ca, ca, size=n)
            lam = np.where(rng.random(n) < self.mix_prob, lam_mix.astype(np.float32), lam)
        return lam, use_cutmix

    def _params_per_batch(self, rng: Any) -> tuple[float, bool]:
        lam, use_cutmix = 1.0, False
        if self.mixup_enabled and rng.random() < self.mix_prob:
            ma, ca = self.mixup_alpha, self.cutmix_alpha
            if ma > 0.0 and ca > 0.0:
                use_cutmix = bool(rng.random() < self.switch_prob)
                lam = float(rng.beta(ca, ca) if use_cutmix else rng.beta(ma, ma))
            elif ma > 0.0:
                lam = float(rng.beta(ma, ma))
            else:
                use_cutmix = True
                lam = float(rng.beta(ca, ca))
        return lam, use_cutmix

    def _box(self, rng: Any, hw: tuple[int, int], lam: Any) -> tuple[tuple[Any, Any, Any, Any], Any]:
        return cutmix_bbox_and_lam(
            hw, lam, rng=rng, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam,
            box_rule=self.box_rule,
        )

    def _spatial(self, image_shape: Any) -> tuple[int, int]:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) == 2:
            return shape[0], shape[1]
        if len(shape) in (3, 4):
            return (shape[-2], shape[-1]) if self.layout == "NCHW" else (shape[-3], shape[-2])
        raise ValueError(
            f"image_shape must be (H, W), or an image's or batch's shape in {self.layout}, got {shape}"
        )

    def sample(self, batch_size: int, image_shape: Any) -> MixupParams:
        """Draw the mixing parameters of one batch, without touching any array.

        For use inside ``jax.jit`` / ``tf.function``: draw on the host, pass the
        result's arrays into the traced step, and mix there with :func:`mix_images`
        (``lam``, ``box``, ``cutmix``, ``index``) and :func:`mixup_target` or
        :func:`mixup_cross_entropy` (``lam``, ``index``).

        Args:
            batch_size: B.
            image_shape: (H, W), or the shape of one image or of the batch in this
                Mixup's ``layout``.

        Returns:
            A :class:`MixupParams` of NumPy values.

        Example:
            >>> import numpy as np, smoothloss
            >>> p = smoothloss.Mixup(cutmix_alpha=1.0, mode="elem", seed=0).sample(3, (8, 8))
            >>> p.lam.shape, p.box.shape, p.index.tolist()
            ((3,), (3, 4), [2, 1, 0])
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
        hw = self._spatial(image_shape)
        if min(hw) < 1:
            raise ValueError(f"images must have H, W >= 1, got {hw}")
        index = np.arange(batch_size - 1, -1, -1, dtype=np.int64)
        rng = self._generator()
        if self.mode == "batch":
            lam, use_cutmix = self._params_per_batch(rng)
            box = np.zeros(4, dtype=np.int64)
            cut = False
            if lam != 1.0 and use_cutmix:
                corners, lam = self._box(rng, hw, lam)
                box[:] = [int(v) for v in corners]
                cut = True
            return MixupParams(float(lam), box, cut, index)

        n = batch_size if self.mode == "elem" else batch_size // 2  # "pair", "half": B // 2 draws
        lam, use_cutmix = self._params_per_elem(rng, n)
        boxes = np.zeros((n, 4), dtype=np.int64)
        cut = np.zeros(n, dtype=bool)
        for i in range(n):
            if lam[i] != 1.0 and use_cutmix[i]:
                corners, lam[i] = self._box(rng, hw, lam[i])
                boxes[i] = [int(v) for v in corners]
                cut[i] = True
        if self.mode == "pair":  # example B-1-i shares the draw of i; an odd middle is left alone
            middle = batch_size % 2
            lam = np.concatenate([lam, np.ones(middle, np.float32), lam[::-1]])
            boxes = np.concatenate([boxes, np.zeros((middle, 4), np.int64), boxes[::-1]])
            cut = np.concatenate([cut, np.zeros(middle, bool), cut[::-1]])
        elif self.mode == "half":  # the first B//2 examples drawn for; the rest (then dropped) keep λ = 1
            rest = batch_size - n
            lam = np.concatenate([lam, np.ones(rest, np.float32)])
            boxes = np.concatenate([boxes, np.zeros((rest, 4), np.int64)])
            cut = np.concatenate([cut, np.zeros(rest, bool)])
        return MixupParams(lam, boxes, cut, index)

    def __call__(self, x: Any, labels: Any) -> tuple[Any, Any]:
        """Mix a batch: ``(mixed images, soft targets)``, new arrays of the inputs'
        namespace and device (the inputs are left as they were).

        Args:
            x: floating images (B, C, H, W) or (B, H, W, C) per ``layout``.
            labels: integer class indices (B,), or with ``multi_label`` dense targets (B, K).

        Returns:
            The mixed images (x's dtype) and the targets (B, K): float64 for float64
            images, else float32. Call it eagerly: under ``jit`` the draw would be
            frozen into the trace (use :meth:`sample` there).
        """
        fw, (x, labels) = bind(x, labels)
        xp = fw.xp
        if x.ndim != 4:
            raise ValueError(
                f"x must be a batch of images of rank 4 ({self.layout}), got shape {tuple(x.shape)}"
            )
        batch = int(x.shape[0])
        self._check_labels(labels, batch)
        dtype = xp.float64 if x.dtype == xp.float64 else xp.float32
        mixed, lam = self._mix(fw, x, self.sample(batch, tuple(x.shape)))
        return mixed, self._targets(labels, lam, dtype)

    def _check_labels(self, labels: Any, batch: int) -> None:
        expected = (batch, self.num_classes) if self.multi_label else (batch,)
        if tuple(labels.shape) != expected:
            what = "dense targets, multi_label=True" if self.multi_label else "one class index per image"
            raise ValueError(f"labels must have shape {expected} ({what}), got {tuple(labels.shape)}")

    def _targets(self, labels: Any, lam: Any, dtype: Any) -> Any:
        return mixup_target(
            labels, self.num_classes, lam=lam, label_smoothing=self.label_smoothing, dtype=dtype,
            multi_label=self.multi_label,
        )

    def _mix(self, fw: Any, x: Any, p: MixupParams, blend: Any = None) -> tuple[Any, Any]:
        """``(mixed images, λ)`` for the draw ``p``: λ a float in ``"batch"`` mode, else an
        array on x's device. A mixup blend is computed in the dtype ``blend`` where given
        (a cutmix box copies pixels, in x's own dtype)."""
        xp = fw.xp

        def blended(x: Any) -> Any:
            return x if blend is None or x.dtype == blend else xp.astype(x, blend)

        if self.mode == "batch":
            if p.lam == 1.0:
                return xp.asarray(x, copy=True), p.lam
            if p.cutmix:
                return mix_images(x, box=tuple(int(v) for v in p.box), layout=self.layout), p.lam
            return mix_images(blended(x), lam=p.lam, layout=self.layout), p.lam
        dev = fw.device(x)
        lam = xp.asarray(p.lam, device=dev)
        box = cut = None
        if bool(np.any(p.cutmix)):
            box, cut = xp.asarray(p.box, device=dev), xp.asarray(p.cutmix, device=dev)
        return mix_images(blended(x), lam=lam, box=box, cutmix=cut, layout=self.layout), lam

    def __repr__(self) -> str:
        shown = []
        for name, attribute in self._OPTIONS.kept_as().items():
            value = getattr(self, attribute)
            if name == "multi_label" and not value:
                continue  # shown only when on
            shown.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
        return f"Mixup({', '.join(shown)})"


class FastCollateMixup(Mixup):
    """Mixup and CutMix while collating uint8 images (timm's ``FastCollateMixup``).

    Pass it as a DataLoader's ``collate_fn``: it takes the list of ``(image, label)``
    pairs of one batch, stacks the images and mixes them, so the batch leaves the
    worker mixed and still in uint8 (timm's training script then normalises on the
    device). The draws, boxes and targets are those of :class:`Mixup` with the same
    options; blends are computed in float32 and rounded half to even back to uint8,
    pastes copy the pixels. The images are never modified.

    Options as :class:`Mixup`, with one more ``mode``: ``"half"`` draws for the first
    B//2 examples, mixes each with its partner B-1-i from the second half, and returns
    only the first half (B//2 examples). ``seed`` and the DataLoader workers: see
    :class:`Mixup` (each worker draws its own stream).

    Differences from timm: the result is in the images' namespace (NumPy images give
    NumPy arrays, torch tensors give torch tensors; timm always returns torch
    tensors); odd batches are allowed; labels must be integers (class indices), or
    with ``multi_label`` dense targets of one shape (K,); the images must be uint8.

    Example:
        >>> import numpy as np
        >>> from smoothloss import FastCollateMixup
        >>> collate = FastCollateMixup(mixup_alpha=1.0, num_classes=3, seed=0)
        >>> batch = [(np.full((3, 4, 4), 10 * i, np.uint8), i % 3) for i in range(4)]
        >>> images, targets = collate(batch)
        >>> images.dtype, images.shape, targets.shape
        (dtype('uint8'), (4, 3, 4, 4), (4, 3))
    """

    _OPTIONS = _CollateOptions

    def __call__(self, batch: Any, _: Any = None) -> tuple[Any, Any]:
        """Collate and mix ``batch``, a sequence of ``(image, label)``: images (C, H, W)
        or (H, W, C) per ``layout``, uint8; labels integer class indices, or with
        ``multi_label`` dense targets (K,) (arrays, tensors or sequences).

        Returns:
            ``(images, targets)``: uint8 images (B, C, H, W) or (B, H, W, C) and float32
            soft targets (B, K), with B halved in ``"half"`` mode.
        """
        if not isinstance(batch, (list, tuple)) or not batch:
            raise ValueError("batch must be a non-empty list of (image, label) pairs")
        for item in batch:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(f"each batch entry must be an (image, label) pair, got {type(item).__name__}")
        fw, images = bind(*(item[0] for item in batch))
        xp = fw.xp
        for image in images:
            if image.dtype != xp.uint8:
                raise TypeError(f"FastCollateMixup mixes uint8 images, got dtype {image.dtype}")
            if image.ndim != 3:
                raise ValueError(f"each image must have rank 3 ({self.layout[1:]}), got shape {tuple(image.shape)}")
        labels = self._collate_labels([item[1] for item in batch])
        x = xp.stack(list(images))
        size = int(x.shape[0])
        dev = fw.device(x)
        labels = xp.asarray(labels, device=dev)
        self._check_labels(labels, size)
        mixed, lam = self._mix(fw, x, self.sample(size, tuple(x.shape)), blend=xp.float32)
        if mixed.dtype != xp.uint8:  # float32 blends: half to even, as timm's rint / round
            mixed = xp.astype(xp.round(mixed), xp.uint8)
        targets = self._targets(labels, lam, xp.float32)
        if self.mode == "half":
            keep = size // 2
            mixed, targets = mixed[:keep, ...], targets[:keep, ...]
        return mixed, targets

    def _collate_labels(self, labels: list[Any]) -> np.ndarray:
        """The batch's labels as one NumPy array: int64 (B,), or (B, K) with ``multi_label``."""
        if self.multi_label:
            return np.stack([np.asarray(label) for label in labels])
        try:
            return np.asarray([operator.index(label) for label in labels], dtype=np.int64)
        except TypeError as e:
            raise TypeError(f"labels must be integer class indices: {e}") from None
