r"""Vocabulary-parallel label-smoothed cross-entropy on ``torch.distributed``, and the
data-parallel token count for a global mean.

Re-exported from :mod:`smoothloss.torch`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from smoothloss import _validation as V
from smoothloss import _linear, _options
from smoothloss._vocab_parallel import options as vocab_parallel_options
from smoothloss.backends import bind, framework, losses

__all__ = ["global_token_count", "vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]


def _process_group(tp_group: Any, group: Any) -> Any:
    """The group that shards the classes: ``tp_group`` (Megatron's name) or ``group``;
    with neither, Megatron's tensor-parallel group where Megatron has set one up (its own
    default), else the world."""
    if tp_group is not None and group is not None:
        raise TypeError("vocab_parallel_cross_entropy got both tp_group= and group=; they are one argument, give one")
    if tp_group is not None:
        return tp_group
    if group is not None:
        return group
    # Looked up, never imported: a Megatron call site that passes no group means
    # parallel_state's tensor-parallel group, and the world would shard the classes wrongly
    # as soon as data or pipeline parallelism is on.
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None


def _distributed(name: str) -> Any:
    """``torch.distributed``, initialised (imported on first use, not with smoothloss.torch)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"{name} needs an initialised torch.distributed process group (torch.distributed.init_process_group)"
        )
    return dist


def _shard_width(dist: Any, group: Any, like: torch.Tensor, width: int) -> int:
    """``width`` (this rank's class count), checked equal on every rank of ``group`` (one
    all-reduce of two integers): the offsets r·V_local assume it, and unequal shards would
    otherwise run the same collectives and give a wrong loss without an error."""
    both = torch.tensor([width, -width], dtype=torch.int64, device=like.device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    widest, narrowest = int(both[0]), -int(both[1])
    if widest != narrowest:
        raise ValueError(
            f"every rank must hold the same number of classes (V_local); the ranks hold from {narrowest} to {widest}"
        )
    return width


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    tp_group: Any = None,
    *,
    convention: str = "others",
    ignore_index: int | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
    group: Any = None,
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy over classes sharded across the ranks of a process group.

    A drop-in for Megatron-core's ``tensor_parallel.vocab_parallel_cross_entropy(
    vocab_parallel_logits, target, label_smoothing=0.0, tp_group=None)``: the same
    positional order, ``tp_group=``, Megatron's smoothing rule (``convention="others"``:
    the target keeps 1-ε, every other class gets ε/(K-1)) and its per-position losses
    (``reduction="none"``). One difference, on purpose: the smoothing term covers all K
    classes, so every rank returns the unsharded loss; Megatron averages over the local
    shard with the local K, so with more than one rank its loss differs by rank
    (Megatron-LM issue 737). With one rank the numbers are Megatron's.

    Rank r of the R ranks of the group holds the contiguous classes
    ``[r·V_local, (r+1)·V_local)`` of the K = R·V_local classes (Megatron-LM's
    tensor-parallel layout); ``labels`` are global class indices, the same on every
    rank. Two all-reduces give the global log-sum-exp ``lse = log Σ_{c<K} exp(x_c)``
    (MAX of the row maxima, then SUM of the shifted sum-exp), the label's logit ``x_y``
    (from the rank that owns it) and ``Σ_{c<K} x_c`` (the same SUM); each position's
    loss is then

    ``ℓ = (on-off)·(lse - x_y) + off·(K·lse - Σ_c x_c) + z_loss·lse²``

    with ``(on, off) = (1-ε, ε/(K-1))`` (``"others"``, the default) or
    ``(1-ε+ε/K, ε/K)`` (``"uniform"``, PyTorch's rule) for the **global** K: the loss of
    the unsharded :func:`smoothloss.cross_entropy` with the same options. The backward
    is the closed form ``(1 + 2·z_loss·lse)·softmax(x) - q`` (times the reduction's
    scale), computed from the local logits and the saved global lse, with no collective;
    each rank gets its own slice of the gradient. The logits are never written to.

    Args:
        local_logits: (..., V_local) floating logits of this rank's classes (class axis
            last; V_local equal on every rank). 16-bit logits are computed in float32.
        labels: (...) integer global class indices in [0, K), or ``ignore_index``.
        label_smoothing: ε in [0, 1] (third, positionally, as in Megatron).
        tp_group: the process group that shards the classes (Megatron's name). Without
            it (and without ``group``): Megatron's tensor-parallel group when
            ``megatron.core.parallel_state`` is loaded and initialised, else the world.
        convention: ``"others"`` (Megatron's ε/(K-1)) or ``"uniform"`` (ε/K).
        ignore_index: label whose positions contribute 0 and leave the mean's denominator.
        reduction: ``"none"`` (default, the positions' shape), ``"sum"`` or ``"mean"``
            over this call's positions (a mean over zero valid positions is 0).
        z_loss: coefficient of the ``lse²`` penalty per valid position.
        softcap: if given, logits ← softcap·tanh(logits/softcap) first (each shard caps
            its own slice; the gradient gains the factor 1 - tanh²).
        kl: subtract the entropy of the smoothed target, so the minimum is 0.
        group: another name for ``tp_group`` (give one of them).

    Returns:
        The loss, the same on every rank of the group.

    Raises:
        RuntimeError: if ``torch.distributed`` is not initialised.
        TypeError: if both ``tp_group`` and ``group`` are given.
        ValueError: for out-of-range labels or options (as :func:`smoothloss.cross_entropy`).
    """
    dist = _distributed("vocab_parallel_cross_entropy")
    group = _process_group(tp_group, group)
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
    v_local = _shard_width(dist, group, local_logits, int(local_logits.shape[-1]))
    num_classes = world * v_local
    opts = vocab_parallel_options(num_classes, **_options.given(
        label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
        reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    ))
    fw = framework(local_logits, labels)
    V.check_label_values(fw, labels, num_classes, opts.ignore_index)
    return losses(fw).vocab_parallel(local_logits, labels, rank * v_local, num_classes, opts, group)


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    tp_group: Any = None,
    group: Any = None,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> torch.Tensor:
    r""":func:`smoothloss.linear_cross_entropy` with the projection sharded by class across
    the ranks of a process group: each rank holds ``weight`` (V_local, H), the rows
    ``[r·V_local, (r+1)·V_local)`` of the (K, H) head (K = R·V_local), and the same
    ``hidden`` (..., H) and global ``labels``. No rank makes more than a chunk of its own
    C×V_local logits; neither the logits nor the head are gathered.

    Each chunk of rows is :func:`vocab_parallel_cross_entropy`'s loss of its local logits
    (two all-reduces: the global row maximum, then the shifted sum-exp, the label's logit
    and the logits' sum), so every rank returns the unsharded loss, smoothing over all
    K classes. The gradients: ``d_weight``/``d_bias`` are this rank's rows of the
    unsharded ones; ``d_hidden`` is the unsharded one on every rank (each rank's
    ``g @ W_local`` is one term of it: one all-reduce SUM of the N×H gradient). A
    tensor-parallel model whose layer before the head already sums the hidden gradient
    over the group (Megatron's ``copy_to_tensor_model_parallel_region``) should pass a
    ``hidden`` that does not require grad there, or divide by R.

    Args:
        hidden: floating (..., H), the same on every rank.
        weight: this rank's (V_local, H) rows of the head, hidden's dtype; V_local equal on
            every rank.
        labels: integer global class indices in [0, K) of shape ``hidden.shape[:-1]``, or
            ``ignore_index``; the same on every rank.
        bias: this rank's (V_local,) slice of the bias, or None.
        chunk_size: rows per chunk, as in :func:`smoothloss.linear_cross_entropy`.
        tp_group: the process group that shards the classes, as in
            :func:`vocab_parallel_cross_entropy`.
        group: another name for ``tp_group`` (give at most one of them).

    The options (``label_smoothing``, ``convention``, ``ignore_index``, ``reduction``,
    ``z_loss``, ``softcap``, ``kl``) and their defaults are
    :func:`smoothloss.linear_cross_entropy`'s, for the global K.

    Returns:
        The loss, the same on every rank of the group.

    Raises:
        RuntimeError: if ``torch.distributed`` is not initialised.
        ValueError, TypeError: as :func:`smoothloss.linear_cross_entropy`.
    """
    dist = _distributed("vocab_parallel_linear_cross_entropy")
    group = _process_group(tp_group, group)
    fw, (hidden, weight, labels, bias) = bind(hidden, weight, labels, bias)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    rows = _shard_width(dist, group, weight, int(weight.shape[0])) if weight.ndim == 2 else 0
    hidden2, weight, labels1, bias, opts, chunk = _linear.prepare(
        fw, hidden, weight, labels, bias, chunk_size, _options.given(
            label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
            reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
        ), num_classes=world * rows,
    )
    loss = losses(fw).vocab_parallel_linear(
        hidden2, weight, bias, labels1, opts, chunk, rank * rows, world * rows, group
    )
    return torch.reshape(loss, labels.shape) if opts.reduction == "none" else loss


def global_token_count(labels: torch.Tensor, ignore_index: int = -100, group: Any = None) -> torch.Tensor:
    r"""The number of labels other than ``ignore_index`` over every rank of ``group``
    (data parallel), at least 1: the denominator of the mean over all ranks' tokens.

    Each rank's ``cross_entropy(..., reduction="sum") / global_token_count(labels)`` sums
    over the ranks to the mean over the whole global batch, however the padding falls
    (the idea of transformers' ``num_items_in_batch``). DDP averages gradients over the R
    ranks, so multiply that loss by R for the gradient of the global mean. A count of 0
    (every label ignored on every rank) is 1: the sums are then 0, and so is the loss.

    Args:
        labels: this rank's integer labels, any shape.
        ignore_index: the label of positions that are not counted (torch's -100).
        group: the data-parallel process group (default: the world).

    Returns:
        A 0-d int64 tensor on the labels' device, the same on every rank (one all-reduce).
    """
    dist = _distributed("global_token_count")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError("labels must be a tensor of integer class indices")
    count = (labels != ignore_index).sum(dtype=torch.int64)
    dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
    return count.clamp(min=1)
