"""The timm drop-ins for mixing on PyTorch: ``Mixup`` and ``FastCollateMixup``.

Thin subclasses of :class:`smoothloss.Mixup` and :class:`smoothloss.FastCollateMixup`
with timm's constructors, for NCHW image tensors; re-exported from :mod:`smoothloss.torch`.
Their options are declared once, in :class:`smoothloss._mixup.MixupOptions`, and checked
there: the constructors here only name them in timm's order and hand them on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

import smoothloss
from smoothloss._mixup import options_of
from smoothloss._torch_support import check_tensor as _check_tensor, wide as _wide

__all__ = ["FastCollateMixup", "Mixup"]

# Integer label dtypes other than int64, widened as smoothloss.torch widens them.
def _integer_or_dense(target: Tensor, multi_label: bool) -> Tensor:
    """Class indices widened to int64; with ``multi_label``, dense targets as given."""
    if multi_label:
        return target
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices, got dtype {target.dtype}; "
            "pass multi_label=True for dense (B, num_classes) targets"
        )
    return _wide(target)


class _TimmConstructor:
    """timm's constructor of ``Mixup`` and ``FastCollateMixup`` (the same names, order
    and defaults for both), handed on to the smoothloss class that follows it in the
    method order, for NCHW images."""

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
        multi_label: bool = False,
        seed: Any = None,
        *,
        box_rule: str = "timm>=1.0.29",
    ) -> None:
        super().__init__(**options_of(locals()), layout="NCHW")


class Mixup(_TimmConstructor, smoothloss.Mixup):
    r"""Drop-in for ``timm.data.Mixup``: ``mixup_fn(x, target) -> (x, soft_target)``.

    A thin subclass of :class:`smoothloss.Mixup` for NCHW image tensors: timm's
    constructor (same names, order and defaults, ``multi_label`` included) plus ``seed``
    and ``box_rule``, timm's draws in timm's order, and the targets of timm's
    ``mixup_target`` (class indices smoothed with ε/K first, dense ``multi_label``
    targets towards 0.5, then ``λ·y + (1-λ)·y.flip(0)``). See :class:`smoothloss.Mixup`
    for the options.

    Deliberate differences from timm:

    * The randomness comes from an explicit NumPy ``Generator`` (``seed``: an int, a
      Generator, or None for fresh entropy), not from the global ``np.random`` state.
    * The result is new tensors on ``x``'s device: ``x`` is left unchanged (timm mixes
      it in place and returns it).
    * Odd batch sizes are allowed (timm asserts an even batch): example i pairs with
      B-1-i, so the middle example pairs with itself and comes out unchanged (up to
      rounding); in ``"pair"`` mode it gets no draw and λ = 1.
    * Without ``multi_label``, ``target`` must hold integer class indices (timm
      truncates floating ones with ``.long()``): ``TypeError`` otherwise. Bad options
      raise ``ValueError`` at construction (timm asserts or fails later).
    * The soft targets are float64 for float64 images and float32 otherwise, on
      ``x``'s device.

    Args:
        mixup_alpha: α of mixup's Beta(α, α); mixup is on when > 0.
        cutmix_alpha: α of cutmix's Beta(α, α); cutmix is on when > 0.
        cutmix_minmax: (min, max) box side as a fraction of the image, or None (forces
            ``cutmix_alpha = 1``, as timm).
        prob: probability of mixing a batch, pair or example.
        switch_prob: probability of cutmix instead of mixup when both are on.
        mode: ``"batch"`` (one draw), ``"pair"`` (one per pair i, B-1-i) or ``"elem"``.
        correct_lam: λ from the clipped box area instead of the drawn value.
        label_smoothing: ε of the targets (default 0.1, as timm).
        num_classes: K (default 1000, as timm).
        multi_label: the targets are dense (B, K) multi-hot or soft targets, each entry
            smoothed towards 0.5 (``t·(1-ε) + ε/2``) and then mixed, as timm 1.0.31's
            ``multi_label``; default False: class indices.
        seed: an int, None or a ``numpy.random.Generator``: where the draws come from.
        box_rule: the CutMix boxes, keyword-only: ``"timm>=1.0.29"`` (default, timm
            1.0.31's) or ``"timm<=1.0.28"`` (to reproduce runs made with older timm).

    Example:
        >>> import torch
        >>> from smoothloss.torch import Mixup
        >>> mixup_fn = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10, seed=0)
        >>> x, y = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4])  # an odd batch is fine
        >>> mixed, target = mixup_fn(x, y)
        >>> mixed.shape, target.shape, target.dtype
        (torch.Size([5, 3, 8, 8]), torch.Size([5, 10]), torch.float32)
        >>> torch.allclose(target.sum(-1), torch.ones(5)), mixed is x
        (True, False)
        >>> multi = Mixup(label_smoothing=0.2, num_classes=3, multi_label=True, seed=0)
        >>> _, t = multi(torch.rand(2, 3, 8, 8), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        >>> t.shape, torch.allclose(t + t.flip(0), torch.ones(2, 3))  # complementary multi-hot rows
        (torch.Size([2, 3]), True)
    """


    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Mix images ``x`` (B, C, H, W) and class indices ``target`` (B,) (or, with
        ``multi_label``, dense targets (B, K)): new tensors ``(mixed x, soft targets
        (B, num_classes))`` on ``x``'s device."""
        _check_tensor("x", x)
        _check_tensor("target", target)
        return super().__call__(x, _integer_or_dense(target, self.multi_label))


class FastCollateMixup(_TimmConstructor, smoothloss.FastCollateMixup):
    r"""Drop-in for ``timm.data.FastCollateMixup``: a DataLoader ``collate_fn`` that
    stacks and mixes uint8 images, ``collate(batch) -> (images, soft_targets)``.

    ``batch`` is the list of ``(image, label)`` pairs a DataLoader hands to its
    ``collate_fn``: uint8 images (C, H, W), torch tensors or NumPy arrays; labels class
    indices (Python or NumPy ints, 0-d integer tensors), or with ``multi_label`` dense
    targets (K,). The result is torch tensors, as timm's: uint8 images (B, C, H, W) and
    float32 targets (B, K), with B halved in ``"half"`` mode. timm's constructor (same
    names, order and defaults) plus ``seed`` and ``box_rule``, timm's draws in timm's
    order, blends computed in float32 and rounded half to even, pastes copying the
    pixels: computed by :class:`smoothloss.FastCollateMixup`.

    Deliberate differences from timm:

    * The randomness comes from an explicit NumPy ``Generator`` (``seed``), not from the
      global ``np.random`` state; in DataLoader workers each worker draws its own
      stream (see :class:`smoothloss.Mixup`).
    * The images of ``batch`` are never modified (timm's ``"pair"`` CutMix writes into
      them), and odd batch sizes are allowed (timm asserts an even batch).
    * Without ``multi_label`` the labels must be integer class indices (``TypeError``
      otherwise); bad options raise ``ValueError`` at construction.
    * The result lies on the images' device (timm's is on the CPU).

    Args:
        mode: as :class:`Mixup`'s, or ``"half"``: draws for the first B//2 examples,
            mixes each with B-1-i and returns only the first half.

    The other arguments are :class:`Mixup`'s (the same constructor).

    Example:
        >>> import numpy as np, torch
        >>> from smoothloss.torch import FastCollateMixup
        >>> collate = FastCollateMixup(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=3, seed=0)
        >>> batch = [(np.full((3, 4, 4), 10 * i, np.uint8), i % 3) for i in range(4)]
        >>> images, targets = collate(batch)
        >>> images.dtype, images.shape, targets.dtype, targets.shape
        (torch.uint8, torch.Size([4, 3, 4, 4]), torch.float32, torch.Size([4, 3]))
        >>> loader = torch.utils.data.DataLoader(batch, batch_size=4, collate_fn=collate)
        >>> [tuple(t.shape) for t in next(iter(loader))]
        [(4, 3, 4, 4), (4, 3)]
    """


    def __call__(self, batch: Any, _: Any = None) -> tuple[Tensor, Tensor]:
        """Collate and mix ``batch``: ``(uint8 images (B, C, H, W), float32 targets (B, K))``."""
        if not isinstance(batch, (list, tuple)) or not batch:
            raise ValueError("batch must be a non-empty list of (image, label) pairs")
        pairs = []
        for item in batch:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(f"each batch entry must be an (image, label) pair, got {type(item).__name__}")
            image, label = item
            if isinstance(image, np.ndarray):
                image = torch.from_numpy(image)
            _check_tensor("image", image)
            if isinstance(label, Tensor) and not self.multi_label:
                if label.ndim != 0 or label.is_floating_point() or label.dtype == torch.bool:
                    raise TypeError(f"labels must be integer class indices, got a tensor of dtype {label.dtype}")
                label = int(label)
            pairs.append((image, label))
        return super().__call__(pairs)
