r"""Vocabulary-parallel label-smoothed cross-entropy for JAX (``jax.shard_map``).

Re-exported from :mod:`smoothloss.jax`.
"""

from __future__ import annotations

from typing import Any, Hashable

import jax

from smoothloss import _options
from smoothloss._vocab_parallel import options as vocab_parallel_options
from smoothloss.backends import bind, losses

__all__ = ["vocab_parallel_cross_entropy"]


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
    if hasattr(jax.lax, "axis_size"):
        shards = int(jax.lax.axis_size(axis_name))
    else:  # older JAX: psum of a Python constant is the static axis size
        shards = int(jax.lax.psum(1, axis_name))
    num_classes = shards * int(local_logits.shape[-1])
    opts = vocab_parallel_options(num_classes, **_options.given(
        label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
        reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    ))
    fw, (local_logits, labels) = bind(local_logits, labels)
    return losses(fw).vocab_parallel(local_logits, labels, axis_name, num_classes, opts)
