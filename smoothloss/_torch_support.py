"""Torch-facing helpers shared by the PyTorch adapters (:mod:`smoothloss.torch`,
:mod:`smoothloss.torch_mixup`, :mod:`smoothloss.transformers`): tensor checks, PyTorch's
legacy reduction flags, the autocast guard and the widening of narrow label dtypes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import smoothloss

__all__ = ["NARROW_INTS", "autocast_enabled", "check_tensor", "forward", "legacy_reduction", "no_autocast", "wide"]

LEGACY_WARNING = "size_average and reduce args will be deprecated, please use reduction='{}' instead."


def legacy_reduction(size_average: bool | None, reduce: bool | None, stacklevel: int) -> str:
    """PyTorch's mapping of the deprecated ``size_average`` / ``reduce`` flags.

    Same table and same ``UserWarning`` text as ``torch.nn._reduction.legacy_get_string``:
    ``None`` counts as True; reduce=False → "none"; else size_average=False → "sum";
    else "mean".
    """
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if size_average and reduce:
        reduction = "mean"
    elif reduce:
        reduction = "sum"
    else:
        reduction = "none"
    warnings.warn(LEGACY_WARNING.format(reduction), UserWarning, stacklevel=stacklevel + 1)
    return reduction


def check_tensor(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}; "
            "use smoothloss.cross_entropy for other array types"
        )


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``. CPU and CUDA always have autocast, and
    ``torch.is_autocast_enabled`` of them is traceable by every supported torch's Dynamo;
    ``torch.amp.is_autocast_available``, which another device type needs first, is not
    traceable before torch 2.8, so it is asked only for those."""
    if device_type in ("cpu", "cuda"):
        return bool(torch.is_autocast_enabled(device_type))
    return bool(torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type))


# Integer label dtypes other than int64: torch's gather/take_along_dim index with int64.
NARROW_INTS = tuple(
    getattr(torch, name)
    for name in ("uint8", "int8", "int16", "int32", "uint16", "uint32", "uint64")
    if hasattr(torch, name)
)


def forward(
    logits: Tensor, targets: Tensor, *, loss: Callable[..., Tensor] = smoothloss.cross_entropy, **options: Any
) -> Tensor:
    """Call the core's ``loss`` (default :func:`smoothloss.cross_entropy`) on
    ``(logits, targets)``, outside any enclosing autocast region (:func:`no_autocast`).
    Class indices of a narrower integer dtype are widened to int64 first.
    """
    return no_autocast(logits.device.type, loss, logits, wide(targets), **options)


def wide(targets: Tensor) -> Tensor:
    """Class indices of a narrower integer dtype widened to int64 (torch's gather indexes with int64)."""
    return targets.to(torch.int64) if targets.dtype in NARROW_INTS else targets


def no_autocast(device_type: str, fn: Callable[..., Tensor], *args: Any, **options: Any) -> Tensor:
    """``fn(*args, **options)`` with autocast disabled on ``device_type`` if it is on.

    Autocast would otherwise choose 16-bit kernels for some of the core's float32 ops;
    the core does its own upcasting of 16-bit logits.
    """
    if autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **options)
    return fn(*args, **options)
