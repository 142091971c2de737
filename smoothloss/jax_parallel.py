r"""Vocabulary-parallel label-smoothed cross-entropy for JAX (``jax.shard_map``).

Re-exported from :mod:`smoothloss.jax`.
"""

from __future__ import annotations

from typing import Any, Hashable

import jax

from smoothloss import _linear, _options
from smoothloss._vocab_parallel import options as vocab_parallel_options
from smoothloss.backends import bind, losses

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]


def _shards(axis_name: Hashable) -> int:
    """The static size of the mesh axis ``axis_name`` (inside ``shard_map``)."""
    if hasattr(jax.lax, "axis_size"):
        return int(jax.lax.axis_size(axis_name))
    return int(jax.lax.psum(1, axis_name))  # older JAX: psum of a Python constant is the static axis size


def vocab_parallel_cross_entropy(
    local_logits: Any,
    labels: Any,
    *,
    axis_name: Hashable,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    ignore_index: int | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> Any:
    r"""Label-smoothed cross-entropy over classes sharded along a mesh axis, inside ``shard_map``.

    Shard r of the R shards along ``axis_name`` holds the contiguous classes
    ``[r·V_local, (r+1)·V_local)`` of the K = R·V_local classes; ``labels`` are global
    class indices, the same on every shard. With the global log-sum-exp
    ``lse = log Σ_{c<K} exp(x_c)`` (a ``pmax`` and a ``psum``), the label's logit ``x_y``
    and ``Σ_{c<K} x_c`` (the same ``psum``), each position's loss is

    ``ℓ = (on-off)·(lse - x_y) + off·(K·lse - Σ_c x_c) + z_loss·lse²``

    with ``(on, off) = (1-ε+ε/K, ε/K)`` (``"uniform"``) or ``(1-ε, ε/(K-1))``
    (``"others"``) for the **global** K: every shard returns the loss of the unsharded
    :func:`smoothloss.cross_entropy`. The gradient is the closed form
    ``(1 + 2·z_loss·lse)·softmax(x) - q`` (times the reduction's scale), each shard's
    slice computed locally from the saved global lse (a ``jax.custom_vjp``; no
    collective in the backward).

    Args:
        local_logits: (..., V_local) floating logits of this shard's classes (class axis
            last; V_local equal on every shard). 16-bit logits are computed in float32.
        labels: (...) integer global class indices in [0, K), or ``ignore_index``.
        axis_name: the ``shard_map`` mesh axis that shards the classes.
        reduction: ``"none"`` (default, the positions' shape), ``"sum"`` or ``"mean"``
            over this call's positions (a mean over zero valid positions is 0).
        softcap: as in :func:`smoothloss.cross_entropy`; each shard caps its own slice.

    The other options (``label_smoothing``, ``convention``, ``ignore_index``, ``z_loss``,
    ``kl``) are :func:`smoothloss.cross_entropy`'s, for the global K.

    Returns:
        The loss, replicated over ``axis_name`` (``out_specs`` may leave that axis out).

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, smoothloss
        >>> from jax.sharding import PartitionSpec as P
        >>> from smoothloss.jax_parallel import vocab_parallel_cross_entropy
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("v",))
        >>> f = jax.jit(jax.shard_map(lambda x, y: vocab_parallel_cross_entropy(
        ...     x, y, axis_name="v", label_smoothing=0.1), mesh=mesh,
        ...     in_specs=(P(None, "v"), P()), out_specs=P()))
        >>> x, y = jnp.array([[2.0, 0.5, -1.0]]), jnp.array([0])
        >>> bool(np.allclose(f(x, y), smoothloss.cross_entropy(x, y, label_smoothing=0.1, reduction="none")))
        True
    """
    num_classes = _shards(axis_name) * int(local_logits.shape[-1])
    opts = vocab_parallel_options(num_classes, **_options.given(
        label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
        reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    ))
    fw, (local_logits, labels) = bind(local_logits, labels)
    return losses(fw).vocab_parallel(local_logits, labels, axis_name, num_classes, opts)


def vocab_parallel_linear_cross_entropy(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    axis_name: Hashable,
    bias: Any = None,
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> Any:
    r""":func:`smoothloss.jax.linear_cross_entropy` with the head sharded by class along a
    mesh axis, inside ``shard_map``: shard r holds ``weight`` (V_local, H), the rows
    ``[r·V_local, (r+1)·V_local)`` of the (K, H) head (``in_specs`` ``P("v")`` for the
    weight and bias, ``P()`` for ``hidden`` and ``labels``). No shard makes more than a
    chunk of its own C×V_local logits.

    Each chunk's loss is :func:`vocab_parallel_cross_entropy`'s of its local logits (a
    ``pmax`` and a ``psum`` a chunk, in the ``lax.scan`` over the chunks), so every shard
    returns the unsharded loss, smoothing over all K classes. Under ``jax.grad`` the
    weight's and bias's gradients are each shard's rows of the unsharded ones and the
    hidden states' is the unsharded one (a ``psum`` of the shards' ``g @ W_local``); a
    ``custom_jvp`` as in :func:`smoothloss.jax.linear_cross_entropy` for ``"mean"`` and
    ``"sum"``, a ``custom_vjp`` for ``"none"``.

    Args:
        hidden: floating (..., H), replicated over ``axis_name``.
        weight: this shard's (V_local, H) rows of the head (a Flax ``Dense`` kernel is
            (H, V): pass ``kernel.T``), hidden's dtype.
        labels: integer global class indices in [0, K) of shape ``hidden.shape[:-1]``, or
            ``ignore_index``, replicated.
        axis_name: the ``shard_map`` mesh axis that shards the classes.
        bias: this shard's (V_local,) slice of the bias, or None.
        chunk_size: rows per chunk, as in :func:`smoothloss.linear_cross_entropy`.

    The options and their defaults are :func:`smoothloss.linear_cross_entropy`'s, for
    the global K.

    Returns:
        The loss, replicated over ``axis_name``.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, smoothloss
        >>> from jax.sharding import PartitionSpec as P
        >>> from smoothloss.jax_parallel import vocab_parallel_linear_cross_entropy
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("v",))
        >>> f = jax.jit(jax.shard_map(lambda h, w, y: vocab_parallel_linear_cross_entropy(
        ...     h, w, y, axis_name="v", label_smoothing=0.1), mesh=mesh,
        ...     in_specs=(P(), P("v"), P()), out_specs=P()))
        >>> h, w, y = jnp.ones((2, 3)), jnp.arange(12.0).reshape(4, 3) / 10, jnp.array([0, 3])
        >>> bool(np.allclose(f(h, w, y), smoothloss.linear_cross_entropy(h, w, y, label_smoothing=0.1)))
        True
    """
    fw, (hidden, weight, labels, bias) = bind(hidden, weight, labels, bias)
    rows = int(weight.shape[0]) if weight.ndim == 2 else 0
    num_classes = _shards(axis_name) * rows
    hidden2, weight, labels1, bias, opts, chunk = _linear.prepare(
        fw, hidden, weight, labels, bias, chunk_size, _options.given(
            label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
            reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
        ), num_classes=num_classes,
    )
    loss = losses(fw).vocab_parallel_linear(hidden2, weight, bias, labels1, opts, chunk, axis_name, num_classes)
    return fw.xp.reshape(loss, labels.shape) if opts.reduction == "none" else loss
