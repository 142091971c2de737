r"""Vocabulary-parallel label-smoothed cross-entropy on ``torch.distributed``.

Re-exported from :mod:`smoothloss.torch`.
"""

from __future__ import annotations

from typing import Any

import torch

from smoothloss import _validation as V
from smoothloss import _options
from smoothloss._vocab_parallel import options as vocab_parallel_options
from smoothloss.backends import framework, losses

__all__ = ["vocab_parallel_cross_entropy"]


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    ignore_index: int | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
    group: Any = None,
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy over classes sharded across the ranks of a process group.

    Rank r of the R ranks of ``group`` holds the contiguous classes
    ``[r·V_local, (r+1)·V_local)`` of the K = R·V_local classes (Megatron-LM's
    tensor-parallel layout); ``labels`` are global class indices, the same on every
    rank. Two all-reduces give the global log-sum-exp ``lse = log Σ_{c<K} exp(x_c)``
    (MAX of the row maxima, then SUM of the shifted sum-exp), the label's logit ``x_y``
    (from the rank that owns it) and ``Σ_{c<K} x_c`` (the same SUM); each position's
    loss is then

    ``ℓ = (on-off)·(lse - x_y) + off·(K·lse - Σ_c x_c) + z_loss·lse²``

    with ``(on, off) = (1-ε+ε/K, ε/K)`` (``"uniform"``) or ``(1-ε, ε/(K-1))``
    (``"others"``) for the **global** K, so every rank returns the loss of the
    unsharded :func:`smoothloss.cross_entropy` (Megatron-LM's smoothing uses the local
    shard and K instead). The backward is the closed form
    ``(1 + 2·z_loss·lse)·softmax(x) - q`` (times the reduction's scale), computed from
    the local logits and the saved global lse, with no collective; each rank gets its
    own slice of the gradient.

    Args:
        local_logits: (..., V_local) floating logits of this rank's classes (class axis
            last; V_local equal on every rank). 16-bit logits are computed in float32.
        labels: (...) integer global class indices in [0, K), or ``ignore_index``.
        label_smoothing: ε in [0, 1].
        convention: ``"uniform"`` or ``"others"``.
        ignore_index: label whose positions contribute 0 and leave the mean's denominator.
        reduction: ``"none"`` (default, the positions' shape), ``"sum"`` or ``"mean"``
            over this call's positions (a mean over zero valid positions is 0).
        z_loss: coefficient of the ``lse²`` penalty per valid position.
        softcap: if given, logits ← softcap·tanh(logits/softcap) first (each shard caps
            its own slice; the gradient gains the factor 1 - tanh²).
        kl: subtract the entropy of the smoothed target, so the minimum is 0.
        group: the process group that shards the classes (default: the world).

    Returns:
        The loss, the same on every rank of ``group``.

    Raises:
        RuntimeError: if ``torch.distributed`` is not initialised.
        ValueError: for out-of-range labels or options (as :func:`smoothloss.cross_entropy`).
    """
    import torch.distributed as dist  # imported on first use, not with smoothloss.torch

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "vocab_parallel_cross_entropy needs an initialised torch.distributed process group "
            "(torch.distributed.init_process_group)"
        )
    if not isinstance(local_logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("local_logits and labels must be torch tensors")
    if not local_logits.is_floating_point():
        raise TypeError(f"local_logits must have a floating dtype, got {local_logits.dtype}")
    if local_logits.ndim < 1 or tuple(labels.shape) != tuple(local_logits.shape[:-1]):
        raise ValueError(
            f"labels must have the shape of local_logits without the class axis (last): "
            f"{tuple(local_logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    v_local = int(local_logits.shape[-1])
    num_classes = world * v_local
    opts = vocab_parallel_options(num_classes, **_options.of(locals()))
    fw = framework(local_logits, labels)
    V.check_label_values(fw, labels, num_classes, opts.ignore_index)
    return losses(fw).vocab_parallel(local_logits, labels, rank * v_local, num_classes, opts, group)
