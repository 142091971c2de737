"""The public cross-entropies: each finds the framework binding of its inputs, checks
the arguments and forwards to the framework's loss entry points
(:func:`smoothloss.backends.losses`), which register the closed-form gradient (see
:mod:`smoothloss._core` and :mod:`smoothloss._linear`)."""

from __future__ import annotations

from typing import Any

from smoothloss import _options
from smoothloss._core import validate
from smoothloss._linear import prepare
from smoothloss.backends import bind, losses

__all__ = ["cross_entropy", "cross_entropy_and_grad", "linear_cross_entropy", "linear_cross_entropy_and_grad"]


def cross_entropy(
    logits: Any,
    targets: Any,
    *,
    axis: int = -1,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight: Any = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> Any:
    r"""Cross-entropy against label-smoothed targets, on any Array-API backend.

    With K classes and ε = ``label_smoothing`` the target distribution is
    ``q = off + (on - off)·t`` where t is the one-hot of an integer label (or the given
    probabilities), and ``(on, off) = (1-ε+ε/K, ε/K)`` for ``convention="uniform"`` or
    ``(1-ε, ε/(K-1))`` for ``convention="others"``. Each position's loss is

    ``ℓ = Σ_c w_c q_c (-log softmax(x)_c) + z_loss·lse(x)² [- Σ_c w_c q_c log q_c if kl]``

    For integer labels the K-wide target is never built:
    ``ℓ = (on-off)·w_y·(-log p_y) + off·Σ_c w_c (-log p_c)``.

    Args:
        logits: floating array; the classes lie along ``axis``. 16-bit logits are
            upcast to float32 inside; the loss is then float32.
        targets: integer class indices (logits' shape without ``axis``) or floating
            probabilities (logits' shape). Both are smoothed.
        axis: the class axis (1 for PyTorch's (N, C, d1, ...) layout).
        label_smoothing: ε in [0, 1]. It, ``z_loss`` and ``softcap`` may also be 0-d
            floating arrays of the logits' framework (a ``tf.Variable``, a traced value
            under ``jax.jit``, a torch tensor under ``torch.compile``), so that a
            schedule changes them without a new trace; their range is checked eagerly
            where the value can be read without a device sync, else at run time where
            the framework can (a graph assertion, a device-side assert). No gradient
            flows to them.
        convention: ``"uniform"`` (ε/K to every class) or ``"others"`` (ε/(K-1) to
            every non-target class).
        weight: optional per-class weights of shape (K,), PyTorch semantics: the mean
            of integer targets divides by Σ_valid w_y, of probabilities by the number
            of positions.
        ignore_index: integer label whose positions contribute 0 and leave the mean's
            denominator. A mean over zero valid positions is 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the logits' shape without ``axis``).
        z_loss: coefficient of the ``lse²`` penalty (PaLM, t5x), added per valid position.
        softcap: if given, ``logits ← softcap·tanh(logits/softcap)`` first (Gemma 2).
        kl: subtract the entropy of q, so the minimum is 0 (t5x); needs a Python float ε.

    Returns:
        The loss, an array of the logits' namespace and device. NumPy arrays given
        next to JAX or TensorFlow logits join as that framework's arrays.

    Raises:
        ValueError: for labels outside ``[0, K)`` that are not ``ignore_index``, where
            they can be read; inside a framework's compiled loop the framework's own
            run-time error instead (``InvalidArgumentError`` in a TensorFlow graph,
            ``RuntimeError`` from ``torch.compile``'s device-side assert), and NaN at
            the position under ``jax.jit`` and XLA (see :func:`smoothloss.jax.checkify_labels`).

    Example:
        >>> import numpy as np, smoothloss
        >>> logits = np.array([[2.0, 0.5, -1.0]])
        >>> float(smoothloss.cross_entropy(logits, np.array([0]), label_smoothing=0.1))  # doctest: +ELLIPSIS
        0.3913...

    References:
        Szegedy et al., "Rethinking the Inception Architecture" (2016), section 7;
        PyTorch ``F.cross_entropy(label_smoothing=...)``; t5x ``compute_weighted_cross_entropy``.
    """
    options = _options.given(
        axis=axis, label_smoothing=label_smoothing, convention=convention,
        ignore_index=ignore_index, reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    )
    fw, (logits, targets, weight) = bind(logits, targets, weight)
    opts = validate(fw, logits, targets, weight, **options)
    return losses(fw).cross_entropy(logits, targets, weight, opts)


def cross_entropy_and_grad(
    logits: Any,
    targets: Any,
    *,
    axis: int = -1,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight: Any = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> tuple[Any, Any]:
    r"""``(loss, dloss/dlogits)`` in one pass, the gradient in closed form.

    ``dℓ/dx = (Σ_c a_c + 2·z_loss·lse)·softmax(x) - a`` with the per-class target mass
    ``a_c = w_c q_c``, scaled by the reduction (1/denominator for ``"mean"``) and, with
    ``softcap``, by ``1 - tanh²(x/softcap)``. For ``reduction="none"`` the gradient is
    that of the sum of the per-position losses (each row's own gradient). The gradient
    has the logits' dtype and layout. Arguments as in :func:`cross_entropy`.

    Example:
        >>> import numpy as np, smoothloss
        >>> loss, g = smoothloss.cross_entropy_and_grad(np.zeros((1, 4)), np.array([2]))
        >>> g.tolist()
        [[0.25, 0.25, -0.75, 0.25]]
    """
    options = _options.given(
        axis=axis, label_smoothing=label_smoothing, convention=convention,
        ignore_index=ignore_index, reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    )
    fw, (logits, targets, weight) = bind(logits, targets, weight)
    opts = validate(fw, logits, targets, weight, **options)
    return losses(fw).cross_entropy_and_grad(logits, targets, weight, opts)


def linear_cross_entropy(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
    class_weight: Any = None,
    filter_eps: float | str | None = None,
) -> Any:
    r"""``cross_entropy(hidden @ weight.T + bias, labels, ...)`` without the N×V logits.

    The rows of ``hidden`` are processed ``chunk_size`` at a time: chunk c's logits
    ``z_c = h_c @ W.T + b`` give each row's loss ``ℓ_n`` and log-sum-exp, and are dropped.
    The loss is ``Σ_n ℓ_n / #valid rows`` (``"mean"``, 0 when no row is valid),
    ``Σ_n ℓ_n`` (``"sum"``) or the ``ℓ_n`` (``"none"``), where ``ℓ_n`` is the label-smoothed
    loss of :func:`smoothloss.cross_entropy`. In torch, JAX and TensorFlow the gradient is
    registered: with ``g = dℓ/dz_c`` in closed form, ``dh_c = g @ W``,
    ``dW = Σ_c g.T @ h_c``, ``db = Σ_c Σ_rows g``, made in the forward pass for
    ``"mean"``/``"sum"`` (the backward scales them by the cotangent) and, for ``"none"``,
    in the backward from each chunk's logits made again and the saved per-row
    log-sum-exp. Peak memory is O(chunk_size·V) on top of the inputs and gradients,
    instead of O(N·V).

    Args:
        hidden: floating (..., H); the leading axes are flattened into N rows.
        weight: the projection (V, H), hidden's dtype.
        labels: integer class indices of shape ``hidden.shape[:-1]``.
        bias: optional (V,), hidden's dtype.
        chunk_size: rows per chunk; default: as many as make about 16 MiB of logits in
            PyTorch on the CPU (where each chunk's gradient takes its logits' place), 64 MiB elsewhere
            (at least 64 rows). The result does not depend on it beyond float rounding.
        label_smoothing: ε in [0, 1], as in :func:`smoothloss.cross_entropy`.
        convention: ``"uniform"`` or ``"others"``, as in :func:`smoothloss.cross_entropy`.
        ignore_index: label of rows that contribute 0, as in :func:`smoothloss.cross_entropy`.
        z_loss: the ``lse²`` coefficient, as in :func:`smoothloss.cross_entropy`.
        softcap: the logit soft cap, as in :func:`smoothloss.cross_entropy`.
        kl: subtract the entropy of the smoothed target, as in :func:`smoothloss.cross_entropy`.
        reduction: ``"mean"`` (over the valid rows), ``"sum"`` or ``"none"`` (shape
            ``hidden.shape[:-1]``).
        class_weight: optional (V,) class weights, the ``weight`` of
            :func:`smoothloss.cross_entropy` (the mean then divides by Σ_valid w_y);
            torch and NumPy/array-api-strict only.
        filter_eps: gradient filtering, Cut Cross-Entropy's: None (the default: the exact
            gradient), a float >= 0, or ``"auto"`` (the machine epsilon of hidden's dtype
            / 32: 3.7e-9 in float32, 2.4e-4 in bfloat16). The backward drops the softmax
            term of the logits' gradient in each block of 128 rows × 128 classes where
            every row's probability (times 1 + 2·z_loss·lse) is below it and no row's
            label falls; each dropped entry is below ``filter_eps`` times the row's
            cotangent. The loss is unchanged. Without label smoothing PyTorch and NumPy
            then skip those blocks' products (the time it saves: docs/distributed.md);
            ``chunk_size`` is rounded down to a multiple of 128. Not with class_weight,
            nor with softcap and label smoothing together.

    Returns:
        The loss, an array of hidden's namespace.

    Example:
        >>> import numpy as np, smoothloss
        >>> from smoothloss import linear_cross_entropy
        >>> rng = np.random.default_rng(0)
        >>> h, W, y = rng.normal(size=(5, 4)), rng.normal(size=(7, 4)), np.array([0, 3, 6, 1, 2])
        >>> chunked = linear_cross_entropy(h, W, y, chunk_size=2, label_smoothing=0.1)
        >>> bool(np.isclose(chunked, smoothloss.cross_entropy(h @ W.T, y, label_smoothing=0.1)))
        True
    """
    options = _options.given(
        label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
        reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    )
    fw, (hidden, weight, labels, bias, class_weight) = bind(hidden, weight, labels, bias, class_weight)
    hidden2, weight, labels1, bias, opts, chunk = prepare(
        fw, hidden, weight, labels, bias, chunk_size, options, class_weight, filter_eps=filter_eps
    )
    extra = {} if class_weight is None else {"class_weight": class_weight}
    loss = losses(fw).linear_cross_entropy(hidden2, weight, bias, labels1, opts, chunk, **extra)
    if opts.reduction == "none":
        loss = fw.xp.reshape(loss, fw.dynamic_shape(labels))
    return loss


def linear_cross_entropy_and_grad(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    chunk_size: int | None = None,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
    filter_eps: float | str | None = None,
) -> tuple[Any, tuple[Any, Any, Any]]:
    r"""``(loss, (d_hidden, d_weight, d_bias))`` of :func:`linear_cross_entropy`, chunked.

    With ``g = dℓ/dz`` the core's closed-form gradient of a chunk's logits z:
    ``d_hidden = g @ W`` (hidden's shape), ``d_weight = Σ_chunks g.T @ h``,
    ``d_bias = Σ_rows g`` (None without a bias). For ``reduction="none"`` the gradients
    are those of the sum of the per-row losses. Arguments as in :func:`linear_cross_entropy`.

    Example:
        >>> import numpy as np
        >>> from smoothloss import linear_cross_entropy_and_grad
        >>> h, W = np.zeros((2, 3)), np.ones((4, 3))
        >>> loss, (dh, dW, db) = linear_cross_entropy_and_grad(h, W, np.array([1, 2]), bias=np.zeros(4))
        >>> round(float(loss), 6), dh.shape, dW.shape, db.tolist()
        (1.386294, (2, 3), (4, 3), [0.25, -0.25, -0.25, 0.25])
    """
    options = _options.given(
        label_smoothing=label_smoothing, convention=convention, ignore_index=ignore_index,
        reduction=reduction, z_loss=z_loss, softcap=softcap, kl=kl,
    )
    fw, (hidden, weight, labels, bias) = bind(hidden, weight, labels, bias)
    hidden2, weight, labels1, bias, opts, chunk = prepare(
        fw, hidden, weight, labels, bias, chunk_size, options, filter_eps=filter_eps
    )
    xp = fw.xp
    loss, grads = losses(fw).linear_cross_entropy_and_grad(hidden2, weight, bias, labels1, opts, chunk)
    d_h, d_w, d_b = grads
    if opts.reduction == "none":
        loss = xp.reshape(loss, fw.dynamic_shape(labels))
    return loss, (xp.reshape(d_h, fw.dynamic_shape(hidden)), d_w, d_b)
