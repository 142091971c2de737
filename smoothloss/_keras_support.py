"""Keras-facing checks shared by the Keras adapters (:mod:`smoothloss.keras`,
:mod:`smoothloss.keras_linear`): the checks of Keras's own arguments and the dtype of
class indices per Keras backend."""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["check_bool", "check_int", "index_dtype"]


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None, optional: bool = False) -> Any:
    """``value`` if it is an int (at least ``minimum``), or None where ``optional``."""
    if value is None and optional:
        return None
    what = ("None or " if optional else "") + "an int" + ("" if minimum is None else f" >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def index_dtype() -> str:
    """The dtype of class indices handed to the core: int64 for torch's gather, int32 on
    JAX (where int64 needs x64 mode)."""
    return "int32" if keras.backend.backend() == "jax" else "int64"
