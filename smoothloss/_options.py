"""The option set of every cross-entropy, declared once.

Each option is one field of :class:`Options`: its name, default, check and one-line doc.
Everything that lists the options is derived from this declaration: the checks
(:meth:`Options.checked`), the per-combination cache key of the static checks
(:func:`key`), the values that compiled graphs take as inputs (:data:`VARYING`), the
adapters' configs and reprs (:func:`non_defaults`) and the docs' option table
(:func:`markdown_table`). Public functions keep their explicit keywords (users read
them) and hand them on with :func:`of`; a test checks that their defaults are these.

Adding an option: a field here, its maths in :mod:`smoothloss._formulas` and
:mod:`smoothloss._core`, its kernels, and the keyword in the public signatures.

Imports nothing from smoothloss and no framework.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

__all__ = [
    "CONVENTIONS", "NAMES", "Options", "REDUCTIONS", "VARYING", "check_choice", "check_nonnegative",
    "check_smoothing", "check_softcap", "defaults", "is_int_scalar", "is_real_scalar", "key", "markdown_table",
    "join", "non_defaults", "of", "split",
]

REDUCTIONS = ("mean", "sum", "none")
CONVENTIONS = ("uniform", "others")


# ---------------------------------------------------------------------- scalar checks
def is_real_scalar(value: Any) -> bool:
    """A Python or NumPy real scalar (``np.float32(0.1)``, ``np.int64(3)``), never a bool
    or an array: the options are static, so arrays and tracers are refused."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_int_scalar(value: Any) -> bool:
    """A Python or NumPy integer scalar, never a bool or an array."""
    return isinstance(value, numbers.Integral) and is_real_scalar(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return value


def check_smoothing(value: Any, name: str = "label_smoothing") -> float:
    if not is_real_scalar(value):
        raise TypeError(f"{name} must be a Python float in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def check_nonnegative(value: Any, name: str) -> float:
    if not is_real_scalar(value):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value < math.inf):  # also rejects NaN; traceable by torch.compile
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_softcap(value: Any, name: str = "softcap") -> float | None:
    if value is None:
        return None
    if not is_real_scalar(value):
        raise TypeError(f"{name} must be None or a Python float > 0, got {type(value).__name__}")
    value = float(value)
    if not (0.0 < value < math.inf):  # also rejects NaN; traceable by torch.compile
        raise ValueError(f"{name} must be None or a finite number > 0, got {value}")
    return value


def _check_axis(value: Any, name: str) -> int:
    if not is_int_scalar(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _check_ignore_index(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not is_int_scalar(value):
        raise TypeError(f"{name} must be None or an int, got {type(value).__name__}")
    return int(value)


def _check_convention(value: Any, name: str) -> str:
    return check_choice(name, value, CONVENTIONS)


def _check_reduction(value: Any, name: str) -> str:
    return check_choice(name, value, REDUCTIONS)


def _check_kl(value: Any, name: str) -> bool:
    return bool(value)


# ---------------------------------------------------------------------- the declaration
def _option(default: Any, check: Callable[[Any, str], Any], doc: str, *, varying: bool = False) -> Any:
    """A declared option: ``check(value, name)`` returns the normalised value or raises;
    ``varying`` marks a number that may change from step to step (a schedule), which
    every compiled graph takes as an input rather than as a constant."""
    return field(default=default, metadata={"check": check, "doc": doc, "varying": varying})


@dataclass(frozen=True)
class Options:
    """Validated, hashable options of one cross-entropy call (static under jit).

    ``axis`` is the class axis (normalised to be non-negative by the caller that knows
    the logits' rank; -1 where the class axis is last by construction, as in the chunked
    and vocab-parallel losses).
    """

    axis: int = _option(-1, _check_axis, "the class axis of the logits")
    label_smoothing: float = _option(
        0.0, check_smoothing, "ε in [0, 1], the target mass spread over the classes", varying=True
    )
    convention: str = _option(
        "uniform", _check_convention, '"uniform": ε/K to every class; "others": ε/(K-1) to every non-target class'
    )
    ignore_index: int | None = _option(
        None, _check_ignore_index, "a label whose positions contribute 0 and leave the mean's denominator"
    )
    reduction: str = _option("mean", _check_reduction, '"mean", "sum" or "none"')
    z_loss: float = _option(0.0, check_nonnegative, "coefficient of lse² per valid position (PaLM, t5x)", varying=True)
    softcap: float | None = _option(
        None, check_softcap, "logits ← softcap·tanh(logits/softcap) first (Gemma 2)", varying=True
    )
    kl: bool = _option(False, _check_kl, "subtract the entropy of the smoothed target, so the minimum is 0 (t5x)")

    @classmethod
    def checked(cls, **given: Any) -> "Options":
        """The options ``given`` (any subset of the declared names; the rest take their
        defaults), each checked by its declared check. An unknown name is a TypeError."""
        unknown = set(given) - set(NAMES)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; the options are {list(NAMES)}")
        return cls(**{name: check(given[name], name) for name, check in _CHECKS if name in given})


NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))
# (name, check) per option, read once: torch.compile cannot trace dataclasses.fields
_CHECKS = tuple((f.name, f.metadata["check"]) for f in fields(Options))
VARYING: tuple[str, ...] = tuple(f.name for f in fields(Options) if f.metadata["varying"])
_DEFAULTS = {f.name: f.default for f in fields(Options)}


def defaults() -> dict[str, Any]:
    """Every option's default, by name."""
    return dict(_DEFAULTS)


def of(namespace: Mapping[str, Any], *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The declared options among ``namespace``'s names (a public function's
    ``locals()``), as keyword arguments to hand on."""
    return {name: namespace[name] for name in NAMES if name in namespace and name not in exclude}


def key(given: Mapping[str, Any]) -> tuple[Any, ...]:
    """The options ``given`` (unchecked) as a hashable key, in the declaration's order,
    with each value's type (``True == 1 == 1.0``, but a bool is not a valid number)."""
    values = tuple(given.get(name, default) for name, default in _DEFAULTS.items())
    return values, tuple(map(type, values))


def non_defaults(values: Mapping[str, Any], *, drop_in: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The declared options among ``values`` that differ from their default (for a
    ``repr``); ``drop_in`` names the defaults a drop-in takes from its original instead
    (torch's ``ignore_index=-100``)."""
    base = {**_DEFAULTS, **(drop_in or {})}
    return {name: values[name] for name in NAMES if name in values and values[name] != base[name]}


@functools.lru_cache(maxsize=256)
def split(opts: Options) -> tuple[Options, tuple[Any, ...]]:
    """``(constants, inputs)``: ``opts`` as a compiled graph takes them. ``inputs`` holds,
    for each :data:`VARYING` option in order, its value where the graph takes it as an
    input, else None; ``constants`` holds everything else, with a placeholder where the
    value is an input, so that every value of a schedule shares one graph (and one
    cache key). An option at its zero (ε = 0, z = 0, no softcap) stays a constant: its
    term is then left out of the graph, which a zero and a non-zero value cannot share.
    With ``kl`` the smoothing stays a constant too: the target's entropy is computed
    from it in Python. Equal constants are one object (a ``tf.function`` tells Python
    arguments apart by identity)."""
    inputs = []
    placeholders = {}
    for name in VARYING:
        value = getattr(opts, name)
        if value is None or value == 0 or (name == "label_smoothing" and opts.kl):
            inputs.append(None)
        else:
            inputs.append(value)
            placeholders[name] = 1.0
    constants = replace(opts, **placeholders)
    return _CANONICAL.setdefault(constants, constants), tuple(inputs)


_CANONICAL: dict[Options, Options] = {}


def join(constants: Options, inputs: tuple[Any, ...]) -> Options:
    """The options of a call from :func:`split`'s two parts (the inputs may be tensors)."""
    return replace(constants, **{name: value for name, value in zip(VARYING, inputs) if value is not None})


def markdown_table() -> str:
    """The docs' option table: name, default, description."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in fields(Options):
        rows.append(f"| `{f.name}` | `{f.default!r}` | {f.metadata['doc']} |")
    return "\n".join(rows)
