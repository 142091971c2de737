"""PyTorch's own test cases for cross-entropy, run against the smoothloss.torch drop-ins.

The cases are not copied: they are read at collection time from the installed torch
wheel's test databases,

* ``torch.testing._internal.common_modules.module_db``, entry ``torch.nn.CrossEntropyLoss``
  (``module_inputs_func``: constructor arguments, forward inputs, a ``reference_fn``), run
  against :class:`smoothloss.torch.CrossEntropyLoss`;
* ``torch.testing._internal.common_methods_invocations.op_db``, entry
  ``nn.functional.cross_entropy`` (``sample_inputs_func`` and the entry's autograd flags),
  run against :func:`smoothloss.torch.cross_entropy`.

Each case is one test id. Values are compared with PyTorch's own module/function and
with the entry's ``reference_fn``; gradients (for the logits, and for probability
targets that require grad) with PyTorch's; and in float64 ``torch.autograd.gradcheck`` /
``gradgradcheck`` run with the checks the entry declares (``supports_forward_ad``,
``supports_gradgrad``, ...). CPU only, float32 and float64 (those of the entry's dtypes).

The inputs are random: they are drawn once, with torch's and Python's generators seeded
(:data:`SEED`), so every run sees the same values. ``KNOWN_DIFFERENCES`` lists the cases
where smoothloss deliberately differs from PyTorch (docs/migration.md): each of them must
fail its check (a strict xfail), every other case must pass.

Needs ``expecttest`` (imported by torch's test utilities); where it or a database layout
is missing, the tests skip and say what is missing.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, NamedTuple

import pytest

torch = pytest.importorskip("torch")

import smoothloss.torch as st  # noqa: E402

SEED = 0
DTYPES = (torch.float32, torch.float64)
#: input sizes (elements) up to which the float64 module cases also run gradcheck / gradgradcheck
GRADCHECK_MAX_NUMEL = 60
GRADGRADCHECK_MAX_NUMEL = 30

_ALL_IGNORED = (
    "every target of the batch equals ignore_index=1: PyTorch's mean is 0/0 = NaN, "
    "smoothloss's mean over no positions is 0 (documented; pytorch issue 116349)"
)

#: test id -> why smoothloss differs there; each listed case must fail its check. Ids are
#: ``module-<dtype>-<desc>`` / ``op-<dtype>-<n>-<shape>-<target>-<options>``, with
#: ``-gradcheck`` appended for the float64 gradcheck of that case.
KNOWN_DIFFERENCES: dict[str, str] = {
    "module-float32-2d_ignore_index_mean": _ALL_IGNORED,
    "module-float64-2d_ignore_index_mean": _ALL_IGNORED,
}

#: the number of cases found in torch 2.13; a later torch may add cases, never lose them
MIN_CASES = {"module": 210, "module-gradcheck": 57, "op": 42, "op-gradcheck": 21}


class Case(NamedTuple):
    id: str
    dtype: Any
    make: Any  # () -> (args, kwargs, inputs, reference_fn or None), fresh tensors
    numel: int


def _leaf(t: Any) -> Any:
    """A fresh leaf copy of ``t`` that requires grad as ``t`` did."""
    if not isinstance(t, torch.Tensor):
        return t
    return t.detach().clone().requires_grad_(t.requires_grad)


def _seeded(fn: Any) -> Any:
    """``fn()`` with torch's and Python's generators seeded, both restored afterwards."""
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            random.seed(SEED)
            return fn()
    finally:
        random.setstate(state)


def _describe(shape: Any) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def _module_cases(entry: Any) -> list[Case]:
    cases = []
    for dtype in DTYPES:
        if dtype not in entry.dtypes:
            continue
        inputs = _seeded(
            lambda dtype=dtype: list(
                entry.module_inputs_func(entry, device="cpu", dtype=dtype, requires_grad=True, training=True)
            )
        )
        for mi in inputs:
            ctor, fwd = mi.constructor_input, mi.forward_input

            def make(ctor=ctor, fwd=fwd, ref=mi.reference_fn):
                return ctor.args, dict(ctor.kwargs), [_leaf(a) for a in fwd.args], ref

            numel = fwd.args[0].numel()
            cases.append(Case(f"module-{str(dtype)[6:]}-{mi.desc}", dtype, make, numel))
    return cases


def _op_cases(entry: Any) -> list[Case]:
    cases = []
    for dtype in DTYPES:
        if dtype not in entry.dtypes:
            continue
        samples = _seeded(
            lambda dtype=dtype: list(entry.sample_inputs_func(entry, "cpu", dtype, requires_grad=True))
        )
        for i, s in enumerate(samples):
            target = s.args[0]
            kind = "prob" if target.is_floating_point() else "index"
            options = ",".join(
                k if isinstance(v, torch.Tensor) else f"{k}={v}" for k, v in sorted(s.kwargs.items())
            )
            name = f"op-{str(dtype)[6:]}-{i:02d}-{_describe(s.input.shape)}-{kind}" + (f"-{options}" if options else "")

            def make(s=s):
                kwargs = {k: _leaf(v) for k, v in s.kwargs.items()}
                return (), kwargs, [_leaf(s.input)] + [_leaf(a) for a in s.args], None

            cases.append(Case(name, dtype, make, s.input.numel()))
    return cases


_MODULE_FIELDS = ("module_inputs_func", "dtypes", "supports_gradgrad", "gradcheck_fast_mode")
_OP_FIELDS = (
    "sample_inputs_func", "dtypes", "supports_autograd", "supports_forward_ad", "supports_gradgrad",
    "supports_fwgrad_bwgrad", "check_batched_grad", "check_batched_gradgrad", "gradcheck_fast_mode",
    "gradcheck_nondet_tol",
)


def _load() -> tuple[dict[str, list[Case]], Any, Any, str | None]:
    """The cases of both suites and the two entries, or the reason they cannot be had."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.testing._internal.common_methods_invocations import op_db
            from torch.testing._internal.common_modules import module_db
    except ImportError as e:
        return {}, None, None, (
            f"torch's test databases (torch.testing._internal) cannot be imported: {e}; "
            "they need the 'expecttest' package (pip install expecttest)"
        )
    modules = [m for m in module_db if getattr(m, "module_cls", None) is torch.nn.CrossEntropyLoss]
    ops = [o for o in op_db if o.name == "nn.functional.cross_entropy" and not o.variant_test_name]
    if len(modules) != 1:
        return {}, None, None, "module_db has no single entry for torch.nn.CrossEntropyLoss"
    if len(ops) != 1:
        return {}, None, None, "op_db has no single entry 'nn.functional.cross_entropy'"
    module, op = modules[0], ops[0]
    for entry, names in ((module, _MODULE_FIELDS), (op, _OP_FIELDS)):
        absent = [name for name in names if not hasattr(entry, name)]
        if absent:
            return {}, None, None, f"{type(entry).__name__} {entry.name!r} has no {', '.join(absent)}"
    try:
        suites = {"module": _module_cases(module), "op": _op_cases(op)}
    except (AttributeError, TypeError) as e:
        return {}, None, None, f"the layout of torch's CrossEntropyLoss / cross_entropy test entries changed: {e}"
    return suites, module, op, None


SUITES, MODULE_ENTRY, OP_ENTRY, MISSING = _load()


def _params(cases: list[Case], check: str = "") -> list[Any]:
    """One pytest param per case, its id the case id (plus ``-check``), strict xfail if listed."""
    if MISSING:
        return [pytest.param(None, id="unavailable", marks=pytest.mark.skip(reason=MISSING))]
    params = []
    for case in cases:
        name = f"{case.id}-{check}" if check else case.id
        marks = ()
        if name in KNOWN_DIFFERENCES:
            marks = (pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[name]),)
        params.append(pytest.param(case, id=name, marks=marks))
    return params


def _module_gradcheck_cases() -> list[Case]:
    return [c for c in SUITES.get("module", []) if c.dtype == torch.float64 and c.numel <= GRADCHECK_MAX_NUMEL]


def _op_gradcheck_cases() -> list[Case]:
    return [c for c in SUITES.get("op", []) if c.dtype == torch.float64]


def _fast(entry: Any) -> bool:
    """The entry's gradcheck_fast_mode; None means fast, as PyTorch's own test wrappers default."""
    return True if entry.gradcheck_fast_mode is None else bool(entry.gradcheck_fast_mode)


def _differentiable(inputs: list[Any]) -> list[Any]:
    return [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def _grads(out: Any, inputs: list[Any]) -> tuple[Any, ...]:
    """The gradient of ``<out, g>`` for a fixed random ``g`` (1 for a scalar)."""
    g = torch.ones_like(out) if out.ndim == 0 else torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.autograd.grad(out, _differentiable(inputs), grad_outputs=g, allow_unused=True)


def _assert_same(ours: Any, theirs: Any, what: str) -> None:
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (what, ours.dtype, theirs.dtype)
    torch.testing.assert_close(ours, theirs, equal_nan=True, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------- module_db: nn.CrossEntropyLoss
@pytest.mark.parametrize("case", _params(SUITES.get("module", [])))
def test_module_db_cross_entropy_loss(case):
    """Value against torch.nn.CrossEntropyLoss and the entry's reference_fn; gradients against PyTorch's."""
    args, kwargs, inputs, reference_fn = case.make()
    ours_module = st.CrossEntropyLoss(*args, **kwargs)
    theirs_module = torch.nn.CrossEntropyLoss(*args, **kwargs)
    ours = ours_module(*inputs)
    theirs_inputs = [_leaf(t) for t in inputs]
    theirs = theirs_module(*theirs_inputs)
    _assert_same(ours, theirs, "value vs torch.nn.CrossEntropyLoss")
    if reference_fn is not None:
        reference = reference_fn(ours_module, *[t.detach().clone() for t in inputs])
        torch.testing.assert_close(
            ours.detach(), reference.to(ours.dtype), equal_nan=True, msg=lambda m: f"value vs reference_fn: {m}"
        )
    for a, b in zip(_grads(ours, inputs), _grads(theirs, theirs_inputs)):
        _assert_same(a, b, "gradient vs torch.nn.CrossEntropyLoss")


@pytest.mark.parametrize("case", _params(_module_gradcheck_cases(), "gradcheck"))
def test_module_db_cross_entropy_loss_gradcheck(case):
    """gradcheck (and gradgradcheck where the entry supports it, on the smallest inputs) in float64."""
    args, kwargs, inputs, _ = case.make()
    module = st.CrossEntropyLoss(*args, **kwargs)
    wrt = _differentiable(inputs)

    def fn(*diff):
        it = iter(diff)
        return module(*[next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs])

    assert torch.autograd.gradcheck(fn, wrt, fast_mode=_fast(MODULE_ENTRY))
    if MODULE_ENTRY.supports_gradgrad and case.numel <= GRADGRADCHECK_MAX_NUMEL:
        assert torch.autograd.gradgradcheck(fn, wrt, fast_mode=_fast(MODULE_ENTRY))


# ---------------------------------------------------------------- op_db: F.cross_entropy
@pytest.mark.parametrize("case", _params(SUITES.get("op", [])))
def test_op_db_cross_entropy(case):
    """Value and gradients against torch.nn.functional.cross_entropy on the entry's samples."""
    _, kwargs, inputs, _ = case.make()
    ours = st.cross_entropy(*inputs, **kwargs)
    theirs_inputs = [_leaf(t) for t in inputs]
    theirs = torch.nn.functional.cross_entropy(*theirs_inputs, **kwargs)
    _assert_same(ours, theirs, "value vs F.cross_entropy")
    for a, b in zip(_grads(ours, inputs), _grads(theirs, theirs_inputs)):
        _assert_same(a, b, "gradient vs F.cross_entropy")


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated:DeprecationWarning")
@pytest.mark.parametrize("case", _params(_op_gradcheck_cases(), "gradcheck"))
def test_op_db_cross_entropy_gradcheck(case):
    """gradcheck / gradgradcheck in float64 with the checks the op entry declares."""
    _, kwargs, inputs, _ = case.make()
    op = OP_ENTRY
    wrt = _differentiable(inputs)

    def fn(*diff):
        it = iter(diff)
        return st.cross_entropy(*[next(it) if t.requires_grad else t for t in inputs], **kwargs)

    assert op.supports_autograd
    assert torch.autograd.gradcheck(
        fn, wrt, check_forward_ad=op.supports_forward_ad, check_batched_grad=op.check_batched_grad,
        nondet_tol=op.gradcheck_nondet_tol, fast_mode=_fast(op),
    )
    if op.supports_gradgrad:
        assert torch.autograd.gradgradcheck(
            fn, wrt, check_fwd_over_rev=op.supports_fwgrad_bwgrad, check_batched_grad=op.check_batched_gradgrad,
            nondet_tol=op.gradcheck_nondet_tol, fast_mode=_fast(op),
        )


# ---------------------------------------------------------------- bookkeeping
def test_upstream_case_counts_and_known_differences():
    """At least as many cases as torch 2.13 has, and every listed difference is a real case id."""
    if MISSING:
        pytest.skip(MISSING)
    counts = {
        "module": len(SUITES["module"]),
        "module-gradcheck": len(_module_gradcheck_cases()),
        "op": len(SUITES["op"]),
        "op-gradcheck": len(_op_gradcheck_cases()),
    }
    for suite, minimum in MIN_CASES.items():
        assert counts[suite] >= minimum, (suite, counts[suite], minimum)
    ids = {c.id for cases in SUITES.values() for c in cases}
    assert len(ids) == counts["module"] + counts["op"]  # every id names one case
    ids |= {f"{c.id}-gradcheck" for c in _module_gradcheck_cases() + _op_gradcheck_cases()}
    assert set(KNOWN_DIFFERENCES) <= ids, set(KNOWN_DIFFERENCES) - ids
