"""JAX transform grid: the conformance grid's option sets under every JAX transform.

For every option set of :data:`smoothloss.testing.cases.OPTION_SETS` (smoothing, both
conventions, class weights, ``ignore_index``, ``z_loss``, ``softcap``, ``kl``, the three
reductions), with integer and probability targets and both class-axis layouts, the
dense loss goes through ``grad``, ``jvp``, ``linearize``, ``jacfwd``, ``jacrev``,
``hessian`` (with respect to the logits, probability targets and weights), ``vmap``,
per-sample ``vmap(grad)`` against a loop of single-example gradients, ``checkpoint``,
all under ``jit``; ``mixup_cross_entropy``, ``binary_cross_entropy`` and
``linear_cross_entropy`` go through the same on option sets that together take each
option they have (the linear loss with ``reduction="none"`` is a custom_vjp: forward
mode must raise JAX's error, reverse mode and forward-over-reverse work).
``jax.test_util.check_grads(order=2, modes=("fwd", "rev"))`` checks against finite
differences on the cases with every option.

The same transforms are applied to an independent plain-``jnp`` float64 reference
written below (softcap, ``log_softmax``, the dense smoothed target, ``where`` masks; no
closed form): autodiff of the reference is the truth for every derivative order, and
every number is compared to <= 1e-10 relative.

Besides: ``jit(value_and_grad)`` and ``jit(hessian)`` with logits sharded over the class
axis of a 2-device mesh, Auto and Explicit, the labels closed over as concrete arrays
(a subprocess sets ``XLA_FLAGS``; this process keeps its flags); NumPy labels next to
jax logits, and in the optax adapter.

Speed (XLA compiles dominate on CPU): each case's transforms of our loss are one
``jax.jit`` compiled with quick options; the reference takes its options as traced
numbers, so one compiled reference serves every option set of the same structure.
Float64 comes from the ``jax.enable_x64()`` context manager around each test; the
process-wide flag is not touched here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from functools import partial
from typing import Any, Callable

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import smoothloss  # noqa: E402
from smoothloss import jax as slj  # noqa: E402
from smoothloss.testing.cases import IGNORE, OPTION_SETS  # noqa: E402

TOL = 1e-10
K = 3  # the positions are (3, 3) too: both layouts give (3, 3, 3) logits
# compile quickly (the test's cost is XLA compiles): LLVM at -O0 and the older CPU
# emitters, which compile small graphs several times faster; float64 semantics unchanged
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _enable_x64():
    """``jax.enable_x64()``, or where it is missing (jax before 0.7: the floor job) its
    older home, ``jax.experimental.enable_x64``."""
    scope = getattr(jax, "enable_x64", None)
    if scope is None:
        from jax.experimental import enable_x64 as scope
    return scope()


@pytest.fixture(autouse=True)
def _x64():
    with _enable_x64():
        yield


def _seed(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("-".join(map(str, parts)).encode()))


# ----------------------------------------------------------------------------- reference
def _xlogx(q: Any) -> Any:
    positive = q > 0
    return jnp.where(positive, q * jnp.log(jnp.where(positive, q, 1.0)), 0.0)


def params_of(kw: dict[str, Any]) -> dict[str, Any]:
    """The reference's options as numbers (traced under jit: one compile serves many sets)."""
    return {
        "eps": np.float64(kw.get("label_smoothing", 0.0)),
        "others": np.float64(kw.get("convention", "uniform") == "others"),
        "z": np.float64(kw.get("z_loss", 0.0)),
        "cap": np.float64(kw.get("softcap") or 0.0),  # 0: no cap
        "kl": np.float64(bool(kw.get("kl", False))),
        "ignore": np.int64(IGNORE if kw.get("ignore_index") is not None else -12345),
        "axis1": np.float64(kw.get("axis", -1) == 1),  # the dense model's layout
        "mean": np.float64(kw.get("reduction", "mean") == "mean"),  # with reduction="scalar"
    }


def _static_reduction(kw: dict[str, Any]) -> str:
    """The models' static reduction: "none", or "scalar" for mean and sum (p["mean"])."""
    return "none" if kw.get("reduction") == "none" else "scalar"


def ref_dense(
    x: Any, targets: Any, weight: Any, p: dict[str, Any], *, axis: int = -1, reduction: str = "mean"
) -> Any:
    """The definition in plain jnp: softcap, log_softmax, the dense smoothed target q,
    ``-Σ w q log p + z·lse² [+ Σ w q log q]``, 0 at ignored positions; the mean divides by
    Σ_valid w_y (integer targets; the count when w = 1) or by the number of positions."""
    x = jnp.moveaxis(x, axis, -1)
    n = x.shape[-1]
    capped = p["cap"] > 0
    cap = jnp.where(capped, p["cap"], 1.0)
    x = jnp.where(capped, cap * jnp.tanh(x / cap), x)
    logp = jax.nn.log_softmax(x, axis=-1)
    lse = jax.nn.logsumexp(x, axis=-1)
    integer = jnp.issubdtype(targets.dtype, jnp.integer)
    if integer:
        valid = targets != p["ignore"]
        y = jnp.where(valid, targets, 0)
        t = (y[..., None] == jnp.arange(n)).astype(x.dtype)
    else:
        valid = jnp.ones(x.shape[:-1], dtype=bool)
        t = jnp.moveaxis(targets, axis, -1)
    eps = p["eps"]
    q = jnp.where(p["others"] > 0, (1.0 - eps) * t + eps * (1.0 - t) / (n - 1), (1.0 - eps) * t + eps / n)
    loss = -jnp.sum(weight * q * logp, axis=-1) + p["z"] * lse**2 + p["kl"] * jnp.sum(weight * _xlogx(q), axis=-1)
    loss = jnp.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    den = jnp.sum(jnp.where(valid, weight[y], 0.0)) if integer else loss.size
    if reduction == "mean":
        return total / den
    # "scalar": the mean where p["mean"], else the sum (one compiled reference for both)
    return jnp.where(p["mean"] > 0, total / den, total)


def ref_cross_entropy(logits: Any, targets: Any, *, weight: Any = None, axis: int = -1, reduction: str = "mean",
                      **kw: Any) -> Any:
    """:func:`ref_dense` with cross_entropy's keywords (jitted: the options are traced,
    so calls with other options reuse the compiled function)."""
    x = jnp.asarray(logits)
    w = jnp.ones(x.shape[axis], x.dtype) if weight is None else jnp.asarray(weight)
    return _ref_dense_jit(x, jnp.asarray(targets), w, params_of(kw), axis=axis, reduction=reduction)


_ref_dense_jit = jax.jit(ref_dense, static_argnames=("axis", "reduction"))


# ----------------------------------------------------------------------------- models
# A model is the reference as a function of the differentiable inputs, named by
# ``names``; the other inputs come from ``fixed``, the options from ``p`` (traced) and
# ``static`` (hashable: reduction, layout).
def _inputs(names: tuple[str, ...], diff: tuple[Any, ...], fixed: dict[str, Any]) -> dict[str, Any]:
    v = dict(fixed)
    v.update(zip(names, diff))
    return v


def _classes_last(a: Any, flag: Any, axis: int) -> Any:
    """``a`` with ``axis`` moved last where ``flag`` (the test's logits are cubes, so
    both layouts have one shape and one compiled reference serves both); integer
    labels pass through."""
    if jnp.issubdtype(a.dtype, jnp.integer):
        return a
    return jnp.where(flag > 0, jnp.moveaxis(a, axis, -1), a)


def dense_model(diff: Any, fixed: Any, p: Any, names: Any, static: Any) -> Any:
    (reduction,) = static
    v = _inputs(names, diff, fixed)
    x, t = _classes_last(v["x"], p["axis1"], 1), _classes_last(v["t"], p["axis1"], 1)
    return ref_dense(x, t, v["w"], p, reduction=reduction)


def mixup_model(diff: Any, fixed: Any, p: Any, names: Any, static: Any) -> Any:
    (reduction,) = static
    v = _inputs(names, diff, fixed)
    lam = v["lam"]
    onehot = (v["y"][..., None] == jnp.arange(K)).astype(jnp.float64)
    partner = (v["partner"][..., None] == jnp.arange(K)).astype(jnp.float64)
    lam = jnp.reshape(lam, lam.shape + (1,) * (onehot.ndim - lam.ndim))
    mixed = lam * onehot + (1.0 - lam) * partner  # q is affine in t: q(mixed) mixes the two q's
    return ref_dense(v["x"], mixed, v["w"], p, reduction=reduction)


def binary_model(diff: Any, fixed: Any, p: Any, names: Any, static: Any) -> Any:
    reduction, sum_classes = static
    v = _inputs(names, diff, fixed)
    x, t, eps = v["x"], v["t"], p["eps"]
    if jnp.issubdtype(t.dtype, jnp.integer) and t.shape == x.shape[:-1]:
        t = (1.0 - eps) * (t[..., None] == jnp.arange(x.shape[-1])).astype(x.dtype) + eps / x.shape[-1]
    else:
        t = t.astype(x.dtype) * (1.0 - eps) + eps / 2
    t = jnp.where(p["thr_on"] > 0, (t > p["thr"]).astype(x.dtype), t)
    pw = v["pw"]
    loss = v["w"] * ((1.0 - t) * x + (1.0 + (pw - 1.0) * t) * jax.nn.softplus(-x))
    if sum_classes:
        loss = jnp.sum(loss, axis=-1)
    return {"none": lambda a: a, "sum": jnp.sum, "mean": jnp.mean}[reduction](loss)


def linear_model(diff: Any, fixed: Any, p: Any, names: Any, static: Any) -> Any:
    (reduction,) = static
    v = _inputs(names, diff, fixed)
    z = v["h"] @ v["W"].T + v["b"]
    return ref_dense(z, v["y"], jnp.ones(z.shape[-1]), p, reduction=reduction)


# ----------------------------------------------------------------------------- transforms
def transforms(f: Callable[..., Any], args: tuple[Any, ...], tangents: tuple[Any, ...], cot: Any,
               batched: tuple[Any, ...], forward: bool, batched_grad: bool = True) -> dict[str, Any]:
    """Every transform of ``f`` at ``args``: ``grad``, ``checkpoint``, ``vmap``,
    ``vmap(grad)``, ``hessian``, ``jvp`` and ``linearize`` with respect to all arguments,
    ``jacrev`` and ``jacfwd`` of the first (``batched_grad=False``: no ``vmap(grad)``
    here, the caller has per-sample gradients). ``forward=False`` (a custom_vjp): no ``jvp``,
    ``linearize`` or ``jacfwd`` (they raise); ``jacrev(jacrev)`` of the first besides the
    Hessian."""
    argnums = tuple(range(len(args)))
    s = lambda *a: jnp.sum(f(*a) * cot)  # noqa: E731
    out = {  # the plain value is the primal output of jvp, linearize and checkpoint
        "grad": jax.grad(s, argnums)(*args),
        "checkpoint": jax.value_and_grad(jax.checkpoint(s), argnums)(*args),
        "vmap": jax.vmap(f)(*batched),
        "jacrev": jax.jacrev(lambda x: f(x, *args[1:]))(args[0]),
    }
    if batched_grad:
        out["vmap(grad)"] = jax.vmap(jax.grad(s, argnums))(*batched)
    # second order: forward-over-reverse works on a custom_vjp too
    out["hessian"] = jax.hessian(s, argnums)(*args)
    if forward:
        y, lin = jax.linearize(f, *args)
        out.update({
            "jvp": jax.jvp(f, args, tangents),
            "linearize": (y, lin(*tangents)),
            "jacfwd": jax.jacfwd(lambda x: f(x, *args[1:]))(args[0]),
        })
    else:
        out["value"] = f(*args)
        out["jacrev(jacrev)"] = jax.jacrev(jax.jacrev(lambda x: s(x, *args[1:])))(args[0])
    return out


def _per_sample(loss: Callable[..., Any], X: Any, T: Any, W: Any, argnums: tuple[int, ...]) -> Any:
    """Per-sample gradients of ``loss(x_i, t_i, w)`` over the first axis of X and T:
    ``(vmap(grad), a loop of single-example grads)``; the loop is ``lax.map`` (one
    example at a time, traced once)."""
    g = jax.grad(lambda xi, ti, w: jnp.sum(loss(xi, ti, w)), argnums)
    per = jax.vmap(g, in_axes=(0, 0, None))(X, T, W)
    loop = jax.lax.map(lambda xt: g(xt[0], xt[1], W), (X, T))
    return per, loop


@partial(jax.jit, static_argnames=("model", "names", "static", "forward", "per_sample"), compiler_options=FAST)
def _truth(args: Any, fixed: Any, p: Any, tangents: Any, cot: Any, batched: Any, *, model: Any, names: Any,
           static: Any, forward: bool, per_sample: Any) -> Any:
    """The reference's transforms; one compile per structure, shared by option sets.
    ``per_sample``: None, or the argnums of the dense model's per-sample gradients."""
    out = transforms(lambda *a: model(a, fixed, p, names, static), args, tangents, cot, batched, forward,
                     batched_grad=per_sample is None)
    if per_sample is None:
        return out, None

    def loss(xi: Any, ti: Any, wi: Any) -> Any:  # one example: the class axis is 0 or last
        return ref_dense(_classes_last(xi, p["axis1"], 0), _classes_last(ti, p["axis1"], 0), wi, p,
                         reduction=static[0])

    return out, _per_sample(loss, args[0], fixed["t"], fixed["w"], per_sample)


# ----------------------------------------------------------------------------- comparison
def _err(actual: Any, expected: Any) -> float:
    """Leaf-wise relative error of two pytrees; a leaf whose truth is all zeros is
    measured against the largest entry of the whole tree."""
    a_leaves, a_tree = jax.tree_util.tree_flatten(actual)
    e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
    assert a_tree == e_tree, f"structure {a_tree} != {e_tree}"
    e_leaves = [np.asarray(e, dtype=np.float64) for e in e_leaves]
    overall = max([float(np.max(np.abs(e))) for e in e_leaves if e.size] + [1e-300])
    worst = 0.0
    for a, e in zip(a_leaves, e_leaves):
        a = np.asarray(a)
        assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
        assert a.dtype == np.float64, f"dtype {a.dtype}"
        if not e.size:
            continue
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(e))
        scale = float(np.max(np.abs(e))) or overall
        worst = max(worst, float(np.max(np.abs(a - e))) / scale)
    return worst


def _assert_close(actual: Any, expected: Any, what: str) -> None:
    err = _err(actual, expected)
    assert err <= TOL, f"{what}: relative error {err:.3e} > {TOL}"


def _select(results: dict[str, Any], idx: list[int]) -> dict[str, Any]:
    """The reference's results restricted to the arguments ``idx`` (ours take a subset:
    the reference always has e.g. a weight, of ones where ours has none)."""
    pick = lambda r: tuple(r[i] for i in idx)  # noqa: E731
    out = dict(results)
    out["grad"] = pick(results["grad"])
    if "vmap(grad)" in results:
        out["vmap(grad)"] = pick(results["vmap(grad)"])
    out["checkpoint"] = (results["checkpoint"][0], pick(results["checkpoint"][1]))
    out["hessian"] = tuple(pick(row) for row in pick(results["hessian"]))
    return out


def run_grid(
    ours: Callable[..., Any], names: tuple[str, ...], args: tuple[Any, ...],
    model: Callable[..., Any], ref_names: tuple[str, ...], fixed: dict[str, Any], p: dict[str, Any],
    static: tuple[Any, ...], rng: np.random.Generator, *, forward: bool = True,
    per_sample: tuple[Callable[..., Any], tuple[int, ...], tuple[int, ...]] | None = None, fd: bool = False,
) -> None:
    """Every transform of ``ours`` (one jit) and of the reference ``model`` (a jit shared
    across option sets), compared to TOL.

    ``args`` (NumPy float64) are our differentiable inputs, named ``names``, the first
    the logits (or hidden states). The reference differentiates ``ref_names`` (a
    superset, in the same order), the others taken from ``fixed`` with zero tangents, so
    that one compiled reference serves many option sets; its results are restricted to
    ours. ``forward=False`` (a custom_vjp): ``jvp``, ``jacfwd`` and ``linearize`` must
    raise JAX's custom_vjp error; forward-over-reverse (``hessian``) works and is
    compared. ``per_sample``: (our single-example loss of (x_i, t_i, w), our argnums,
    the reference's argnums): per-sample gradients over the first axis of the logits and
    of ``fixed["t"]``, ``vmap(grad)`` against a loop, on both sides. ``fd``: also
    ``check_grads`` in the first argument (order 2; forward and reverse mode, or
    reverse only), through jit (its dozen compiles take a few seconds so, ~10 eagerly).
    """
    # inputs made in NumPy and handed over (eager jnp ops would each compile)
    jargs = tuple(jnp.asarray(a) for a in args)
    tangents = tuple(jnp.asarray(rng.normal(size=np.shape(a))) for a in args)
    mine_of = {n: i for i, n in enumerate(names)}
    r_args = tuple(jargs[mine_of[n]] if n in names else fixed[n] for n in ref_names)
    out_shape = jax.eval_shape(lambda a: model(a, fixed, p, ref_names, static), r_args).shape
    cot = jnp.asarray(rng.normal(size=out_shape))
    # a batch of two: the inputs and the inputs scaled (keeps probabilities and weights positive)
    batched = tuple(jnp.asarray(np.stack([a, np.multiply(a, 0.8)])) for a in args)
    r_tangents = tuple(tangents[mine_of[n]] if n in names else jnp.asarray(np.zeros(fixed[n].shape)) for n in ref_names)
    r_batched = tuple(batched[mine_of[n]] if n in names else jnp.asarray(np.stack([np.asarray(fixed[n])] * 2))
                      for n in ref_names)

    def mine_all(a: Any, tg: Any, c: Any, b: Any) -> Any:
        out = transforms(ours, a, tg, c, b, forward, batched_grad=per_sample is None)
        if per_sample is None:
            return out, None
        return out, _per_sample(per_sample[0], a[0], fixed["t"], fixed["w"], per_sample[1])

    mine, mine_per = jax.jit(mine_all, compiler_options=FAST)(jargs, tangents, cot, batched)
    truth, truth_per = _truth(
        r_args, fixed, p, r_tangents, cot, r_batched, model=model, names=ref_names, static=static, forward=forward,
        per_sample=None if per_sample is None else per_sample[2],
    )
    truth = _select(truth, [ref_names.index(n) for n in names])
    assert set(mine) == set(truth)
    for name in mine:
        _assert_close(mine[name], truth[name], name)
    if per_sample is not None:
        _, mine_nums, ref_nums = per_sample
        truth_per = tuple(tuple(r[ref_nums.index(i)] for i in mine_nums) for r in truth_per)
        _assert_close(*mine_per, "ours: vmap(grad) vs a loop of single-example grads")
        _assert_close(*truth_per, "reference: vmap(grad) vs a loop of single-example grads")
        _assert_close(mine_per[0], truth_per[0], "per-sample gradients vs reference")
    if not forward:  # jit-lowered: the error comes at trace or lowering time, nothing compiles
        for name, call in {
            "jvp": lambda a, tg: jax.jvp(ours, a, tg),
            "jacfwd": lambda a, tg: jax.jacfwd(ours)(*a),
            "linearize": lambda a, tg: jax.linearize(ours, *a)[1](*tg),  # raises when called
        }.items():
            with pytest.raises(TypeError, match="custom_vjp"):
                jax.jit(call).lower(jargs, tangents)
    if fd:  # finite differences, in the logits: check_grads hands NumPy arrays to the function
        modes = ("fwd", "rev") if forward else ("rev",)
        check_grads(jax.jit(lambda v: ours(v, *jargs[1:])), (np.asarray(args[0]),), order=2, modes=modes)


# ----------------------------------------------------------------------------- dense
LAYOUTS = {"3d-last": -1, "3d-axis1": 1}


def dense_cases() -> list[Any]:
    out, n = [], 0
    for name, opts in OPTION_SETS.items():
        for kind in ("int",) if opts.get("ignore") else ("int", "prob"):
            layout = list(LAYOUTS)[n % len(LAYOUTS)]
            out.append(pytest.param(name, kind, layout, id=f"{name}-{kind}-{layout}"))
            n += 1
    return out


def make_dense(name: str, kind: str, layout: str) -> Any:
    """(logits, targets, weight or None, keyword options) in NumPy float64, (3, 3, 3)."""
    opts = OPTION_SETS[name]
    rng = _seed(name, kind, layout)
    pos, axis = (3, 3), LAYOUTS[layout]
    x = rng.normal(scale=1.5, size=pos + (K,))
    kw = {k: v for k, v in opts.items() if k not in ("weight", "ignore")}
    if kind == "int":
        t = rng.integers(0, K, size=pos)
        if opts.get("ignore"):  # two ignored positions, never all; every example keeps some
            t[0, 0] = t[2, 1] = IGNORE
            kw["ignore_index"] = IGNORE
    else:
        raw = rng.normal(size=pos + (K,))
        t = np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
    w = rng.uniform(0.5, 2.0, size=K) if opts.get("weight") else None
    if axis != -1:
        x = np.moveaxis(x, -1, axis)
        t = np.moveaxis(t, -1, axis) if kind == "prob" else t
        kw["axis"] = axis
    return x, t, w, kw


# check_grads (finite differences; a dozen compiles of its own, a few seconds) on the
# case with every option: weight, ignore_index, z_loss, softcap, kl, "others"
FD_DENSE = {("everything", "int")}


@pytest.mark.parametrize("name,kind,layout", dense_cases())
def test_dense_transforms(name: str, kind: str, layout: str) -> None:
    """Every transform; and per-sample gradients (vmap(grad) over the 3 examples of
    (3, K)) = a loop of single-example gradients = the reference's."""
    x, t, w, kw = make_dense(name, kind, layout)
    prob = kind == "prob"
    names = ("x",) + (("t",) if prob else ()) + (("w",) if w is not None else ())
    args = (x,) + ((t,) if prob else ()) + ((w,) if w is not None else ())
    axis = kw.get("axis", -1)
    fixed = {"t": jnp.asarray(t), "w": jnp.asarray(np.ones(K) if w is None else w)}

    def ours(*a: Any) -> Any:
        v = _inputs(names, a, {"t": t, "w": None})
        return smoothloss.cross_entropy(v["x"], v["t"], weight=v["w"], **kw)

    # per-sample: examples along the first axis, the class axis shifts down by one
    single_kw = dict(kw, axis=axis - 1 if axis > 0 else axis)

    def ours_single(xi: Any, ti: Any, wi: Any) -> Any:
        return smoothloss.cross_entropy(xi, ti, weight=wi if w is not None else None, **single_kw)

    ref_names = ("x", "t", "w") if prob else ("x", "w")
    ref_nums = (0, 1, 2) if prob else (0, 2)
    our_nums = tuple(i for i, n in zip(ref_nums, ref_names) if n in names)
    run_grid(ours, names, args, dense_model, ref_names, fixed, params_of(kw), (_static_reduction(kw),),
             _seed("tangents", name, kind), per_sample=(ours_single, our_nums, ref_nums), fd=(name, kind) in FD_DENSE)


# ----------------------------------------------------------------------------- mixup
# option sets of the grid for mixup (ignore_index dropped: mixup has none), each with
# (λ per example, differentiated | a Python float; a given partner index | the flip;
# positions (B, 2) | (B,)). Every case compiles its own functions, so two that together
# take every option (both conventions, weight, z_loss, softcap, kl) and way of mixing
MIXUP_SETS = {
    "everything": (False, False, False),
    "everything-uniform-none": (True, True, True),
    "plain": (True, False, False),
    "others-weight-sum": (False, True, True),
}


@pytest.mark.parametrize("name", list(MIXUP_SETS))
def test_mixup_transforms(name: str) -> None:
    opts = OPTION_SETS[name]
    lam_array, given_index, layered = MIXUP_SETS[name]
    rng = _seed("mixup", name)
    B = 4
    pos = (B, 2) if layered else (B,)
    x = rng.normal(scale=1.5, size=pos + (K,))
    y = rng.integers(0, K, size=pos)
    y[1] = y[2]  # an example whose (flip) partner has the same label
    w = rng.uniform(0.5, 2.0, size=K) if opts.get("weight") else None
    kw = {k: v for k, v in opts.items() if k not in ("weight", "ignore")}
    lam = rng.uniform(0.2, 0.8, size=B) if lam_array else 0.35
    index = rng.permutation(B) if given_index else None
    names = ("x",) + (("w",) if w is not None else ()) + (("lam",) if lam_array else ())
    args = tuple(v for v in (x, w, lam if lam_array else None) if v is not None)
    fixed = {
        "y": jnp.asarray(y), "partner": jnp.asarray(y[::-1] if index is None else y[index]),
        "w": jnp.asarray(np.ones(K) if w is None else w), "lam": jnp.asarray(np.broadcast_to(lam, (B,)).copy()),
    }

    def ours(*a: Any) -> Any:
        v = _inputs(names, a, {"w": None, "lam": lam})
        return smoothloss.mixup_cross_entropy(v["x"], y, lam=v["lam"], index=index, weight=v["w"], **kw)

    run_grid(ours, names, args, mixup_model, ("x", "w", "lam"), fixed, params_of(kw),
             (_static_reduction(kw),), rng, fd=name == "everything")


# ----------------------------------------------------------------------------- binary
BINARY_SETS = {
    "ls1-int-sum": ({"label_smoothing": 1.0, "reduction": "sum"}, "int"),
    "pos-weight-prob-none": ({"label_smoothing": 0.1, "pos_weight": True, "reduction": "none"}, "prob"),
    "everything-prob": ({"label_smoothing": 0.3, "weight": True, "pos_weight": True, "sum_classes": True}, "prob"),
    "threshold-sum-classes-none": (
        {"label_smoothing": 0.1, "target_threshold": 0.5, "weight": True, "sum_classes": True, "reduction": "none"},
        "prob",
    ),
}


@pytest.mark.parametrize("name", list(BINARY_SETS))
def test_binary_transforms(name: str) -> None:
    opts, kind = BINARY_SETS[name]
    rng = _seed("binary", name)
    shape = (3, 4)
    x = rng.normal(scale=2.0, size=shape)
    t = rng.integers(0, shape[-1], size=shape[:-1]) if kind == "int" else rng.uniform(0.0, 1.0, size=shape)
    w = rng.uniform(0.5, 2.0, size=shape) if opts.get("weight") else None
    pw = rng.uniform(0.5, 3.0, size=shape[-1:]) if opts.get("pos_weight") else None
    kw = {k: v for k, v in opts.items() if k not in ("weight", "pos_weight")}
    diff_t = kind == "prob" and "target_threshold" not in opts
    given = {"x": x, "t": t if diff_t else None, "w": w, "pw": pw}
    names = tuple(n for n, a in given.items() if a is not None)
    args = tuple(a for a in given.values() if a is not None)
    fixed = {"t": jnp.asarray(t), "w": jnp.ones(shape), "pw": jnp.ones(shape[-1:])}
    p = {"eps": np.float64(kw.get("label_smoothing", 0.0)), "thr_on": np.float64("target_threshold" in kw),
         "thr": np.float64(kw.get("target_threshold", 0.0))}

    def ours(*a: Any) -> Any:
        v = _inputs(names, a, {"t": t, "w": None, "pw": None})
        return smoothloss.binary_cross_entropy(v["x"], v["t"], weight=v["w"], pos_weight=v["pw"], **kw)

    ref_names = ("x", "t", "w", "pw") if kind == "prob" else ("x", "w", "pw")
    static = (kw.get("reduction", "mean"), kw.get("sum_classes", False))
    run_grid(ours, names, args, binary_model, ref_names, fixed, p, static, rng, fd=name == "everything-prob")


# ----------------------------------------------------------------------------- linear
# option sets of the grid for the linear loss (no class weights, no kl), each with
# (rows, chunk_size, bias): one chunk and a tail over 2-D rows; a scan over 2 chunks
# and a tail. Together every option it has (both conventions, ignore_index, z_loss,
# softcap), the custom_jvp ("mean") and the custom_vjp ("none")
LINEAR_SETS = {
    "everything": ((2, 3), 4, False),
    "everything-uniform-none": ((5,), 2, True),
    "plain": ((4,), 3, True),
    "others-ignore-sum": ((2, 3), 2, False),
}


@pytest.mark.parametrize("name", list(LINEAR_SETS))
def test_linear_transforms(name: str) -> None:
    """mean/sum: a custom_jvp, every transform; none: a custom_vjp, reverse mode only
    (jvp, jacfwd and linearize raise JAX's custom_vjp error; hessian works)."""
    opts = {k: v for k, v in OPTION_SETS[name].items() if k not in ("weight", "kl")}
    lead, chunk, with_bias = LINEAR_SETS[name]
    rng = _seed("linear", name)
    H = 3
    h = rng.normal(size=lead + (H,))
    W = rng.normal(scale=0.8, size=(K, H))
    b = rng.normal(size=K)
    y = rng.integers(0, K, size=lead)
    kw = {k: v for k, v in opts.items() if k != "ignore"}
    if opts.get("ignore"):
        y.flat[1] = IGNORE
        kw["ignore_index"] = IGNORE
    names = ("h", "W") + (("b",) if with_bias else ())
    args = (h, W) + ((b,) if with_bias else ())
    fixed = {"y": jnp.asarray(y), "b": jnp.zeros(K)}

    def ours(*a: Any) -> Any:
        return smoothloss.linear_cross_entropy(a[0], a[1], y, bias=a[2] if with_bias else None, chunk_size=chunk, **kw)

    reduction = kw.get("reduction", "mean")
    run_grid(ours, names, args, linear_model, ("h", "W", "b"), fixed, params_of(kw), (_static_reduction(kw),), rng,
             forward=reduction != "none", fd=name == "everything-uniform-none")


# ----------------------------------------------------------------------------- jit reuse
def test_jit_reuse_across_calls() -> None:
    """One jitted value_and_grad serves several inputs of one shape (no retrace per value)."""
    traces = []
    kw = {"label_smoothing": 0.1, "ignore_index": IGNORE, "z_loss": 1e-3}

    def loss(x: Any, y: Any, w: Any) -> Any:
        traces.append(1)
        return smoothloss.cross_entropy(x, y, weight=w, **kw)

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
    ref_vg = jax.value_and_grad(lambda x, y, w: ref_cross_entropy(x, y, weight=w, **kw), argnums=(0, 2))
    for seed in range(3):
        rng = _seed("reuse", seed)
        x = jnp.asarray(rng.normal(size=(6, K)))
        y = rng.integers(0, K, size=6)
        y[seed] = IGNORE
        w = jnp.asarray(rng.uniform(0.5, 2.0, size=K))
        _assert_close(vg(x, jnp.asarray(y), w), ref_vg(x, jnp.asarray(y), w), f"seed {seed}")
    assert len(traces) == 1


# ----------------------------------------------------------------------------- sharding
def _sharding_cases(num_classes: int) -> list[tuple[str, Any, Any, dict[str, Any]]]:
    """(name, logits (4, K), targets, options) in NumPy."""
    rng = _seed("sharding", num_classes)
    x = rng.normal(size=(4, num_classes))
    y = rng.integers(0, num_classes, size=4)
    y_ign = y.copy()
    y_ign[1] = IGNORE
    raw = rng.normal(size=(4, num_classes))
    p = np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
    w = rng.uniform(0.5, 2.0, size=num_classes)
    return [
        ("ls", x, y, {"label_smoothing": 0.1}),
        ("everything-none", x, y_ign, {"label_smoothing": 0.2, "convention": "others", "weight": w,
                                       "ignore_index": IGNORE, "z_loss": 1e-3, "softcap": 5.0, "kl": True,
                                       "reduction": "none"}),
        ("prob-kl-weight", x, p, {"label_smoothing": 0.1, "kl": True, "weight": w}),
    ]


def _sharded_results(num_classes: int, devices: list[Any]) -> dict[str, Any]:
    """Logits sharded as P(None, "v") on a mesh of ``devices``, Auto and Explicit axes;
    under one jit: value_and_grad of the (summed) loss with the labels closed over as a
    jax array, as one committed to the last device and as a NumPy array, and the
    Hessian (forward over reverse). NumPy results by key; shared with the 2-device
    subprocess."""
    from jax.sharding import AxisType

    out = {}
    for kind in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((len(devices),), ("v",), axis_types=(kind,), devices=devices)
        spec = NamedSharding(mesh, P(None, "v"))
        for name, x, targets, kw in _sharding_cases(num_classes):
            variants = {"jax": jnp.asarray(targets), "committed": jax.device_put(jnp.asarray(targets), devices[-1]),
                        "numpy": targets}

            def all_variants(v: Any, kw: dict[str, Any] = kw, variants: dict[str, Any] = variants) -> Any:
                res = {where: jax.value_and_grad(lambda u: jnp.sum(smoothloss.cross_entropy(u, labels, **kw)))(v)
                       for where, labels in variants.items()}
                res["hessian"] = jax.hessian(lambda u: jnp.sum(smoothloss.cross_entropy(u, variants["jax"], **kw)))(v)
                loss, grad = smoothloss.cross_entropy_and_grad(v, variants["jax"], **kw)  # the closed form
                res["and_grad"] = (jnp.sum(loss), grad)
                return res

            res = jax.jit(all_variants, compiler_options=FAST)(jax.device_put(jnp.asarray(x), spec))
            for where, value in res.items():
                if kind == AxisType.Explicit and where != "hessian":  # the sharding is part of the type
                    assert value[1].sharding.is_equivalent_to(spec, 2), value[1].sharding
                out[f"{kind.name}-{name}-{where}"] = jax.tree_util.tree_map(np.asarray, value)
    return out


@partial(jax.jit, static_argnames=("reduction",), compiler_options=FAST)
def _ref_value_grad_hessian(x: Any, t: Any, w: Any, p: Any, *, reduction: str) -> Any:
    total = lambda v: jnp.sum(ref_dense(v, t, w, p, reduction=reduction))  # noqa: E731
    return jax.value_and_grad(total)(x), jax.hessian(total)(x)


def _check_sharded(got: dict[str, Any], num_classes: int) -> None:
    for name, x, targets, kw in _sharding_cases(num_classes):
        w = kw.get("weight", np.ones(num_classes))
        want, want_hess = _ref_value_grad_hessian(jnp.asarray(x), jnp.asarray(targets), jnp.asarray(w), params_of(kw),
                                                  reduction=kw.get("reduction", "mean"))
        for kind in ("Auto", "Explicit"):
            for where in ("jax", "committed", "numpy", "and_grad"):
                _assert_close(tuple(got[f"{kind}-{name}-{where}"]), want, f"{kind} mesh, {name}, {where} labels")
            _assert_close(got[f"{kind}-{name}-hessian"], want_hess, f"{kind} mesh, {name}, hessian")


_TWO_DEVICES = textwrap.dedent(
    """
    import pickle, sys
    import jax
    sys.path.insert(0, sys.argv[1])
    import test_transforms_jax as T
    assert len(jax.devices()) == 2, jax.devices()
    with T._enable_x64():
        out = T._sharded_results(6, jax.devices())
    sys.stdout.buffer.write(pickle.dumps(out))
    """
)


def test_jit_sharded_logits_two_devices() -> None:
    """Logits sharded over the class axis (P(None, "v"), 3 of 6 classes per device) of a
    2-device CPU mesh, Auto and Explicit (``jax.make_mesh``'s default), the labels closed
    over as concrete arrays: in a subprocess that sets XLA_FLAGS for itself (this
    process keeps its flags)."""
    import pickle

    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES, here], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-4000:]
    _check_sharded(pickle.loads(proc.stdout), 6)


# ----------------------------------------------------------------------------- NumPy labels
def test_numpy_labels_with_jax_logits() -> None:
    """NumPy labels next to jax logits (eager, closed over under jit, in the optax
    adapter) equal the all-jax call and the reference; check_grads, which hands NumPy
    arrays to the function, passes."""
    rng = _seed("numpy-labels")
    x_np = rng.normal(size=(5, K))
    y_np = rng.integers(0, K, size=5)
    y_np[2] = IGNORE
    raw = rng.normal(size=(5, K))
    p_np = np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
    w_np = rng.uniform(0.5, 2.0, size=K)
    x, w = jnp.asarray(x_np), jnp.asarray(w_np)
    kw = {"label_smoothing": 0.1, "ignore_index": IGNORE, "z_loss": 1e-3, "weight": w_np}
    for reduction in ("mean", "none"):
        mixed = smoothloss.cross_entropy(x, y_np, reduction=reduction, **kw)
        assert isinstance(mixed, jax.Array)
        alljax = smoothloss.cross_entropy(x, jnp.asarray(y_np), reduction=reduction, **dict(kw, weight=w))
        _assert_close(mixed, alljax, f"numpy vs jax labels, {reduction}")
        want = ref_cross_entropy(x, y_np, reduction=reduction, **kw)
        _assert_close(mixed, want, f"numpy labels vs reference, {reduction}")
    want = ref_cross_entropy(x, p_np, kl=True)
    _assert_close(smoothloss.cross_entropy(x, p_np, kl=True), want, "numpy probabilities")
    # the optax adapter (per example, uniform smoothing)
    y_ok = np.where(y_np == IGNORE, 0, y_np)
    mixed = slj.softmax_cross_entropy_with_integer_labels(x, y_ok, label_smoothing=0.1)
    alljax = slj.softmax_cross_entropy_with_integer_labels(x, jnp.asarray(y_ok), label_smoothing=0.1)
    _assert_close(mixed, alljax, "adapter: numpy vs jax labels")
    _assert_close(mixed, ref_cross_entropy(x, y_ok, label_smoothing=0.1, reduction="none"), "adapter vs reference")
    _assert_close(slj.softmax_cross_entropy(x, p_np, label_smoothing=0.1),
                  ref_cross_entropy(x, p_np, label_smoothing=0.1, reduction="none"), "adapter, numpy probabilities")

    # closed over under jit: value_and_grad of both
    def both(v: Any) -> Any:
        def adapter(u: Any) -> Any:
            return jnp.sum(slj.softmax_cross_entropy_with_integer_labels(u, y_ok, label_smoothing=0.1))

        return jax.value_and_grad(lambda u: smoothloss.cross_entropy(u, y_np, **kw))(v), jax.grad(adapter)(v)

    want = (jax.value_and_grad(lambda u: ref_cross_entropy(u, y_np, **kw))(x),
            jax.grad(lambda u: ref_cross_entropy(u, y_ok, label_smoothing=0.1, reduction="sum"))(x))
    _assert_close(jax.jit(both, compiler_options=FAST)(x), want, "jit with numpy labels closed over")
    # NumPy logits with NumPy labels: the NumPy binding
    _assert_close(smoothloss.cross_entropy(x_np, y_np, **kw), ref_cross_entropy(x_np, y_np, **kw), "NumPy logits")
    # check_grads hands NumPy arrays to the function: its finite differences evaluate it
    # on NumPy logits (here next to jax labels and a NumPy weight), its jvp and vjp on
    # tracers. Order 1 eagerly here (an eager order 2 compiles for ~10 s); order 2
    # through jit in the grid's cases with fd=True.
    y_jax = jnp.asarray(y_np)
    check_grads(lambda v: smoothloss.cross_entropy(v, y_jax, **kw), (x_np,), order=1, modes=("fwd", "rev"))
