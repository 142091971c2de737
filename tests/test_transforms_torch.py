"""Every PyTorch transform on every option set of the conformance grid, in float64.

For each option set of :data:`smoothloss.testing.cases.OPTION_SETS` (smoothing, both
conventions, weight, ignore_index, z_loss, softcap, kl) and both kinds of target (class
indices, probabilities), the same transform is applied to ``smoothloss.cross_entropy``
and to a reference, and the results agree to 1e-10 relative:

* where ``F.cross_entropy`` covers the option set (uniform convention, weight,
  ignore_index, label smoothing, probability targets, the reductions) the reference is
  ``F.cross_entropy`` itself;
* otherwise (z_loss, softcap, kl, convention="others"), and for derivatives in the
  class weights of integer targets (PyTorch does not differentiate ``nll_loss`` in its
  weight), a plain float64 reference written here from the definition (log_softmax,
  the smoothed target q, PyTorch's weighted-mean rule). Autodiff of that plain function
  is the truth for every derivative order.

The transforms: ``torch.func`` grad, vjp, jacrev, jacfwd, hessian, vmap (also with
the targets and weights batched) and per-sample gradients ``vmap(grad(...))`` against a
loop of single-example gradients; forward-mode dual tensors; double backward
(Hessian-vector products); gradcheck and gradgradcheck with batched gradients and
forward mode (against finite differences); ``functional_call`` on
``smoothloss.torch.CrossEntropyLoss``; meta tensors and ``FakeTensorMode`` (shapes and
dtypes, no value checks); one ``torch.compile(fullgraph=True, dynamic=True)`` function
over the whole grid at two batch sizes; ``torch.export`` of a module using the loss.
The chunked linear loss has first derivatives only: double backward and torch.func
raise a RuntimeError that says so.

The labels of ignore_index option sets have at least one ignored and one kept position.
Where the reference is ``F.cross_entropy`` no batch is all-ignored, except the single
examples of the per-sample test, where smoothloss's documented rule (a mean over zero
valid positions is 0, PyTorch gives NaN) is asserted instead.
"""

from __future__ import annotations

import inspect
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")

import torch.autograd.forward_ad as fwAD  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, vjp, vmap  # noqa: E402

import smoothloss  # noqa: E402
import smoothloss.torch as st  # noqa: E402
from smoothloss import _validation  # noqa: E402
from smoothloss.testing.cases import IGNORE, OPTION_SETS  # noqa: E402

pytestmark = [
    # torch scripts some of its own helpers lazily (first jacfwd / forward-mode call)
    pytest.mark.filterwarnings("ignore:`torch.jit.script.*` is deprecated:DeprecationWarning"),
    # torch.compile instantiates our autograd.Function class internally
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
]

TOL = 1e-10
K = 5
DTYPE = torch.float64
# name -> (positions, class axis); K is inserted at the class axis.
LAYOUTS = {"2d": ((4,), -1), "3d-last": ((2, 3), -1), "3d-axis1": ((2, 3), 1)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one intra-op thread. With two, on a busy machine, each op waits for
    the pool (milliseconds per 4×5 softmax) and the module runs several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the references
def _covered_by_torch(options: dict[str, Any]) -> bool:
    """Whether F.cross_entropy computes this option set."""
    uniform = options.get("convention", "uniform") == "uniform" or not options.get("label_smoothing", 0.0)
    return uniform and not options.get("z_loss") and options.get("softcap") is None and not options.get("kl")


def _to_torch_layout(a: Any, axis: int) -> Any:
    """The class axis at 1 (PyTorch's (N, C, d1, ...)); an unbatched (C,) stays."""
    return a if a.ndim == 1 else a.movedim(axis, 1)


def torch_reference(
    x: Any, t: Any, w: Any, *, axis: int = -1, label_smoothing: float = 0.0, ignore_index: int | None = None,
    reduction: str = "mean", convention: str = "uniform",
) -> Any:
    """``F.cross_entropy`` on the same arguments (the uniform convention only)."""
    assert convention == "uniform" or not label_smoothing
    x = _to_torch_layout(x, axis)
    if t.is_floating_point():
        t = _to_torch_layout(t, axis)
    return F.cross_entropy(
        x, t, weight=w, ignore_index=IGNORE if ignore_index is None else ignore_index,
        reduction=reduction, label_smoothing=label_smoothing,
    )


def plain_reference(
    x: Any, t: Any, w: Any, *, axis: int = -1, label_smoothing: float = 0.0, convention: str = "uniform",
    ignore_index: int | None = None, reduction: str = "mean", z_loss: float = 0.0, softcap: float | None = None,
    kl: bool = False,
) -> Any:
    """The loss from its definition, in plain differentiable torch ops.

    ``ℓ = -Σ_c w_c q_c log p_c + z·lse² [+ Σ_c w_c q_c log q_c]`` with the logits soft-capped
    first, q the smoothed target; ``"mean"`` divides by Σ_valid w_y (integer targets with
    weights), the number of valid positions (integer targets), or the number of positions
    (probabilities), and is 0 over zero valid positions.
    """
    x = x.movedim(axis, -1)
    k = x.shape[-1]
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    logp = torch.log_softmax(x, dim=-1)
    lse = torch.logsumexp(x, dim=-1)
    eps = label_smoothing
    on, off = (1.0 - eps + eps / k, eps / k) if convention == "uniform" else (1.0 - eps, eps / (k - 1))
    wv = torch.ones(k, dtype=x.dtype, device=x.device) if w is None else w
    integer = not t.is_floating_point()
    if integer:
        valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        y = torch.where(valid, t, 0)
        target = (y[..., None] == torch.arange(k, device=y.device)).to(x.dtype)
    else:
        valid = None
        target = t.movedim(axis, -1)
    q = off + (on - off) * target
    loss = -(wv * q * logp).sum(-1)
    if kl:
        loss = loss + (wv * torch.special.xlogy(q, q)).sum(-1)
    if z_loss:
        loss = loss + z_loss * lse**2
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if integer and w is not None:
        den = torch.where(valid, wv[y], 0.0).sum()
    elif integer:
        den = valid.to(x.dtype).sum()
    else:
        den = torch.tensor(float(loss.numel()), dtype=x.dtype, device=x.device)
    nonzero = den != 0
    return torch.where(nonzero, loss.sum() / torch.where(nonzero, den, 1.0), 0.0)


# ---------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Case:
    option_set: str
    kind: str  # "int" or "prob"
    layout: str
    reference: str  # "torch" (F.cross_entropy) or "plain"
    diff_weight: bool  # whether the class weights are differentiated too

    @property
    def id(self) -> str:
        ref = "" if self.reference == "torch" or not _covered_by_torch(self.spec) else "-plain"
        return f"{self.option_set}-{self.kind}-{self.layout}{ref}"

    @property
    def spec(self) -> dict[str, Any]:
        return OPTION_SETS[self.option_set]

    @property
    def weighted(self) -> bool:
        return bool(self.spec.get("weight"))

    @property
    def options(self) -> dict[str, Any]:
        """The keyword options of smoothloss.cross_entropy, weight excluded."""
        opts = {k: v for k, v in self.spec.items() if k not in ("weight", "ignore")}
        if self.spec.get("ignore"):
            opts["ignore_index"] = IGNORE
        axis = LAYOUTS[self.layout][1]
        if axis != -1:
            opts["axis"] = axis
        return opts

    @property
    def argnums(self) -> tuple[int, ...]:
        """The differentiated arguments of f(logits, targets, weight)."""
        return (0,) + ((1,) if self.kind == "prob" else ()) + ((2,) if self.weighted and self.diff_weight else ())

    def make(self) -> tuple[Any, Any, Any]:
        """(logits, targets, weight or None), float64, from a seed derived from the id."""
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.option_set}-{self.kind}-{self.layout}".encode()))
        positions, axis = LAYOUTS[self.layout]
        x = 2.0 * torch.randn(positions + (K,), generator=gen, dtype=DTYPE)
        if self.kind == "int":
            t = torch.randint(0, K, positions, generator=gen)
            if self.spec.get("ignore"):
                mask = torch.rand(positions, generator=gen) < 0.3
                mask.view(-1)[0] = True  # at least one ignored
                mask.view(-1)[-1] = False  # and at least one kept
                t = torch.where(mask, IGNORE, t)
        else:
            t = torch.softmax(torch.randn(positions + (K,), generator=gen, dtype=DTYPE), dim=-1)
        w = 0.5 + 1.5 * torch.rand(K, generator=gen, dtype=DTYPE) if self.weighted else None
        if axis != -1:
            x = x.movedim(-1, axis).contiguous()
            if self.kind == "prob":
                t = t.movedim(-1, axis).contiguous()
        return x, t, w

    def ours(self, **override: Any) -> Callable[..., Any]:
        opts = {**self.options, **override}
        return lambda x, t, w: smoothloss.cross_entropy(x, t, weight=w, **opts)

    def ref(self, **override: Any) -> Callable[..., Any]:
        opts = {**self.options, **override}
        if self.reference == "torch":
            return lambda x, t, w: torch_reference(x, t, w, **opts)
        return lambda x, t, w: plain_reference(x, t, w, **opts)

    def cotangent(self, out: Any, seed: int = 1) -> Any:
        gen = torch.Generator().manual_seed(seed)
        return 0.5 + torch.rand(out.shape, generator=gen, dtype=DTYPE)


def _grid() -> list[Case]:
    cases, n = [], 0
    names = list(LAYOUTS)
    for name, spec in OPTION_SETS.items():
        for kind in ("int",) if spec.get("ignore") else ("int", "prob"):
            layout = names[n % len(names)]
            n += 1
            if not _covered_by_torch(spec):
                cases.append(Case(name, kind, layout, "plain", True))
            elif spec.get("weight") and kind == "int":
                # torch does not differentiate nll_loss in its weight: F.cross_entropy for the
                # rest, the plain reference for the weight's derivatives
                cases.append(Case(name, kind, layout, "torch", False))
                cases.append(Case(name, kind, layout, "plain", True))
            else:
                cases.append(Case(name, kind, layout, "torch", True))
    return cases


CASES = _grid()
IDS = [c.id for c in CASES]


# ---------------------------------------------------------------- helpers
def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return [tree]


def assert_close(actual: Any, expected: Any, tol: float = TOL) -> None:
    """Leaf by leaf: same shape and dtype, max|a - e| <= tol·max|e| (a leaf that is 0 in
    the reference, e.g. the block of a loss linear in the targets, against the largest
    leaf). The expected values must be finite and not all 0."""
    a_leaves, e_leaves = _leaves(actual), _leaves(expected)
    assert len(a_leaves) == len(e_leaves)
    assert all(torch.isfinite(e).all() for e in e_leaves), "the reference is not finite"
    overall = max(float(e.detach().abs().max()) if e.numel() else 0.0 for e in e_leaves)
    assert overall > 0.0, "the reference is identically 0: nothing would be compared"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        a, e = a.detach(), e.detach()
        assert a.shape == e.shape, f"leaf {i}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert a.dtype == e.dtype, f"leaf {i}: dtype {a.dtype} != {e.dtype}"
        if not e.numel():
            continue
        scale = float(e.abs().max()) or overall
        err = float((a - e).abs().max()) / scale
        assert err <= tol, f"leaf {i}: relative error {err:.3e} > {tol:.0e}"


def _on(f: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> Callable[..., Any]:
    """f as a function of the arguments ``argnums`` alone (the others fixed at ``args``)."""

    def g(*diff: Any) -> Any:
        full = list(args)
        for i, value in zip(argnums, diff):
            full[i] = value
        return f(*full)

    return g


def _setup(case: Case) -> tuple[tuple[Any, ...], tuple[Any, ...], Any, Any, Any]:
    """(args, diff args, ours on diff, reference on diff, cotangent of the output)."""
    args = case.make()
    diff = tuple(args[i] for i in case.argnums)
    ours, ref = _on(case.ours(), args, case.argnums), _on(case.ref(), args, case.argnums)
    v = case.cotangent(ref(*diff))
    return args, diff, ours, ref, v


def _scalar(f: Callable[..., Any], v: Any) -> Callable[..., Any]:
    """The output contracted with a fixed cotangent: a scalar function of the same inputs."""
    return lambda *a: (f(*a) * v).sum()


def _all_argnums(diff: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(range(len(diff)))


# ---------------------------------------------------------------- torch.func
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grad(case):
    _, diff, ours, ref, v = _setup(case)
    assert_close(ours(*diff), ref(*diff))
    argnums = _all_argnums(diff)
    assert_close(grad(_scalar(ours, v), argnums)(*diff), grad(_scalar(ref, v), argnums)(*diff))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vjp(case):
    _, diff, ours, ref, v = _setup(case)
    out, pullback = vjp(ours, *diff)
    out_ref, pullback_ref = vjp(ref, *diff)
    assert_close(out, out_ref)
    assert_close(pullback(v), pullback_ref(v))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jacrev(case):
    _, diff, ours, ref, _ = _setup(case)
    argnums = _all_argnums(diff)
    assert_close(jacrev(ours, argnums)(*diff), jacrev(ref, argnums)(*diff))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jacfwd(case):
    _, diff, ours, ref, _ = _setup(case)
    argnums = _all_argnums(diff)
    assert_close(jacfwd(ours, argnums)(*diff), jacfwd(ref, argnums)(*diff))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hessian(case):
    """jacfwd(jacrev): forward mode over the differentiable backward, every block."""
    _, diff, ours, ref, v = _setup(case)
    argnums = _all_argnums(diff)
    assert_close(hessian(_scalar(ours, v), argnums)(*diff), hessian(_scalar(ref, v), argnums)(*diff))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap(case):
    """vmap over a stack of logits, then over stacks of every input; each member equals
    the reference's loss of that member."""
    x, t, w = case.make()
    gen = torch.Generator().manual_seed(7)
    xs = x + torch.randn((3,) + x.shape, generator=gen, dtype=DTYPE)
    axis = LAYOUTS[case.layout][1]
    ts = torch.stack([t, t.flip(0), t]) if case.kind == "int" else torch.softmax(
        torch.randn((3,) + t.shape, generator=gen, dtype=DTYPE), dim=axis if axis == -1 else axis + 1
    )
    ws = None if w is None else w * torch.tensor([1.0, 0.5, 2.0], dtype=DTYPE)[:, None]
    ours, ref = case.ours(), case.ref()
    assert_close(vmap(ours, in_dims=(0, None, None))(xs, t, w), torch.stack([ref(xi, t, w) for xi in xs]))
    batched = vmap(ours, in_dims=(0, 0, None if w is None else 0))(xs, ts, ws)
    expected = torch.stack([ref(xs[i], ts[i], None if w is None else ws[i]) for i in range(3)])
    assert_close(batched, expected)


def _per_sample_options(case: Case) -> dict[str, Any]:
    """The options of one example (the batch axis 0 removed)."""
    axis = case.options.get("axis", -1)
    return {"axis": axis - 1} if axis > 0 else {}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_per_sample_grads(case):
    """vmap(grad(...)) over examples, the labels batched too, equals the rows of a loop of
    single-example gradients, which equal the reference's."""
    x, t, w = case.make()
    override = _per_sample_options(case)
    single, single_ref = case.ours(**override), case.ref(**override)
    argnums = case.argnums  # weight (unbatched) gradients per example too
    in_dims = (0, 0, None)
    batched = vmap(grad(lambda *a: single(*a).sum(), argnums), in_dims=in_dims)(x, t, w)
    looped = [grad(lambda *a: single(*a).sum(), argnums)(x[i], t[i], w) for i in range(x.shape[0])]
    stacked = tuple(torch.stack([g[j] for g in looped]) for j in range(len(argnums)))
    assert_close(batched, stacked, tol=1e-13)
    expected = []
    for i in range(x.shape[0]):
        all_ignored = case.kind == "int" and bool((t[i] == IGNORE).all())
        if all_ignored and case.options.get("reduction", "mean") == "mean":
            # smoothloss's documented rule: the mean over zero valid positions is 0 (torch: NaN)
            assert all(float(g.abs().max()) == 0.0 for g in looped[i])
            expected.append(tuple(torch.zeros_like(g) for g in looped[i]))
        else:
            expected.append(grad(lambda *a: single_ref(*a).sum(), argnums)(x[i], t[i], w))
    assert_close(stacked, tuple(torch.stack([g[j] for g in expected]) for j in range(len(argnums))))


# ---------------------------------------------------------------- torch.autograd
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_ad_dual_tensors(case):
    _, diff, ours, ref, _ = _setup(case)
    gen = torch.Generator().manual_seed(3)
    tangents = [torch.randn(d.shape, generator=gen, dtype=DTYPE) for d in diff]

    def push(f):
        with fwAD.dual_level():
            out = fwAD.unpack_dual(f(*(fwAD.make_dual(d, u) for d, u in zip(diff, tangents))))
            return out.primal, out.tangent

    assert_close(push(ours), push(ref))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_double_backward_hvp(case):
    """torch.autograd.grad(create_graph=True), then the gradient of <grad, u>: a
    Hessian-vector product in every differentiated input."""
    _, diff, ours, ref, v = _setup(case)
    gen = torch.Generator().manual_seed(5)
    u = [torch.randn(d.shape, generator=gen, dtype=DTYPE) for d in diff]

    def hvp(f):
        leaves = [d.detach().clone().requires_grad_() for d in diff]
        grads = torch.autograd.grad(_scalar(f, v)(*leaves), leaves, create_graph=True)
        assert all(g.requires_grad for g in grads)
        return grads, torch.autograd.grad(sum((g * ui).sum() for g, ui in zip(grads, u)), leaves)

    assert_close(hvp(ours), hvp(ref))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_and_gradgradcheck(case):
    """Against finite differences: reverse and forward mode, batched gradients, and the
    second derivatives in both rev-over-rev and fwd-over-rev."""
    _, diff, ours, ref, _ = _setup(case)
    inputs = tuple(d.detach().clone().requires_grad_() for d in diff)
    assert_close(ours(*inputs).detach(), ref(*diff))
    assert torch.autograd.gradcheck(
        ours, inputs, check_batched_grad=True, check_forward_ad=True, check_batched_forward_grad=True,
        fast_mode=True,
    )
    assert torch.autograd.gradgradcheck(
        ours, inputs, check_batched_grad=True, check_fwd_over_rev=True, check_rev_over_rev=True, fast_mode=True,
    )


# ---------------------------------------------------------------- nn.Module, meta, fake
def _module_options(case: Case) -> dict[str, Any]:
    """The drop-in's options: its class axis is 1, and ignore_index is left at its
    default -100, the grid's."""
    return {k: v for k, v in case.options.items() if k not in ("axis", "ignore_index")}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_functional_call_on_the_module(case):
    """torch.func.functional_call on smoothloss.torch.CrossEntropyLoss (classes on axis 1)
    with the weight buffer swapped in, differentiated in the logits and the buffer;
    against the same on torch.nn.CrossEntropyLoss, or the plain reference."""
    x, t, w = case.make()
    axis = LAYOUTS[case.layout][1]
    x = _to_torch_layout(x, axis)
    t = _to_torch_layout(t, axis) if case.kind == "prob" else t
    placeholder = None if w is None else torch.ones_like(w)  # the weight comes in through functional_call
    module = st.CrossEntropyLoss(weight=placeholder, **_module_options(case))
    params = {} if w is None else {"weight": w}

    def ours(p, x):
        return functional_call(module, p, (x, t))

    if case.reference == "torch":
        theirs_module = torch.nn.CrossEntropyLoss(
            weight=placeholder, label_smoothing=case.options.get("label_smoothing", 0.0),
            reduction=case.options.get("reduction", "mean"),
        )

        def theirs(p, x):
            return functional_call(theirs_module, p, (x, t))
    else:
        opts = {k: v for k, v in case.options.items() if k != "axis"}

        def theirs(p, x):
            return plain_reference(x, t, p.get("weight"), axis=1, **opts)

    v = case.cotangent(theirs(params, x))
    argnums = (0, 1) if case.weighted and case.diff_weight else 1

    def value_and_grad(f):
        return f(params, x), grad(lambda p, x: (f(p, x) * v).sum(), argnums)(params, x)

    assert_close(value_and_grad(ours), value_and_grad(theirs))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_meta_tensors(case):
    """On the meta device: the loss and its gradients have the reference's shapes and
    dtypes; no value check runs (meta labels have no values)."""
    args = tuple(None if a is None else a.to("meta") for a in case.make())
    results = []
    for f in (case.ours(), case.ref()):
        leaves = [args[i].clone().requires_grad_() for i in case.argnums]
        out = _on(f, args, case.argnums)(*leaves)
        results.append([out, *torch.autograd.grad(out.sum(), leaves)])
    for a, e in zip(*results):
        assert a.device.type == "meta" and (a.shape, a.dtype) == (e.shape, e.dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fake_tensor_mode(case):
    """Under FakeTensorMode: shapes and dtypes of the loss and gradients equal the
    reference's; labels out of range pass, as their values cannot be read (eagerly the
    same labels raise)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    x, t, w = case.make()
    if case.kind == "int":
        t = t.clone()
        t.view(-1)[-1] = K + 3  # out of range
        with pytest.raises(ValueError, match="labels must lie in"):
            case.ours()(x, t, w)
    with FakeTensorMode() as mode:
        args = tuple(None if a is None else mode.from_tensor(a) for a in (x, t, w))
        results = []
        for f in (case.ours(), case.ref()):
            leaves = [args[i].clone().requires_grad_() for i in case.argnums]
            out = _on(f, args, case.argnums)(*leaves)
            results.append([out, *torch.autograd.grad(out.sum(), leaves)])
    for a, e in zip(*results):
        assert isinstance(a, FakeTensor) and (a.shape, a.dtype) == (e.shape, e.dtype)


# ---------------------------------------------------------------- compile and export
# Under torch.compile(dynamic=True) Dynamo makes floats read from defaults, globals and
# module attributes symbolic; smoothloss._validation's math.isfinite cannot take one
# (a graph break, an error under fullgraph=True).
_ISFINITE_ON_OPTIONS = any(
    "math.isfinite" in inspect.getsource(f) for f in (_validation.check_nonnegative, _validation.check_softcap)
)

# one entry per (option set, kind): the grid in one compiled function and one export
GRID = list({(c.option_set, c.kind): c for c in CASES}.values())


def _grid_inputs(batch: int, seed: int) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(batch, K, generator=gen, dtype=DTYPE)
    y = torch.randint(0, K, (batch,), generator=gen)
    y_ignored = y.clone()
    y_ignored[0] = IGNORE
    p = torch.softmax(torch.randn(batch, K, generator=gen, dtype=DTYPE), dim=-1)
    w = 0.5 + 1.5 * torch.rand(K, generator=gen, dtype=DTYPE)
    return x, y, y_ignored, p, w


def _grid_losses(loss_fn: Callable[..., Any], xs: Any, y: Any, y_ignored: Any, ps: Any, w: Any) -> list[Any]:
    """Every (option set, kind) of the grid, case i on the (N, K) batch ``xs[i]`` (and
    probabilities ``ps[i]``): a stack of copies gives each case its own gradient from one
    backward pass."""
    out = []
    for i, case in enumerate(GRID):
        opts = {k: v for k, v in case.options.items() if k != "axis"}
        t = ps[i] if case.kind == "prob" else y_ignored if "ignore_index" in opts else y
        out.append(loss_fn(case, xs[i], t, w if case.weighted else None, opts))
    return out


def _ours_loss(case: Case, x: Any, t: Any, w: Any, opts: dict[str, Any]) -> Any:
    return smoothloss.cross_entropy(x, t, weight=w, **opts)


def _ref_loss(case: Case, x: Any, t: Any, w: Any, opts: dict[str, Any]) -> Any:
    if _covered_by_torch(case.spec):
        return torch_reference(x, t, w, **opts)
    return plain_reference(x, t, w, **opts)


def _check_grid(outs: list[Any], grads: tuple[Any, Any], x: Any, y: Any, y_ignored: Any, p: Any, w: Any) -> None:
    """Each case's loss and its gradients ``grads[0][i]`` (logits), ``grads[1][i]``
    (probabilities) against the reference's."""
    for i, (case, out) in enumerate(zip(GRID, outs)):
        leaves = [x.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()]
        ref = _grid_losses(_ref_loss, [leaves[0]] * len(GRID), y, y_ignored, [leaves[1]] * len(GRID), w)[i]
        if case.kind == "prob":
            expected = (ref, *torch.autograd.grad(ref.sum(), leaves))
            assert_close((out, grads[0][i], grads[1][i]), expected)
        else:
            assert_close((out, grads[0][i]), (ref, *torch.autograd.grad(ref.sum(), leaves[0])))


def test_compile_fullgraph_dynamic_two_batch_sizes():
    """One compiled function computes every (option set, kind) of the grid; a second
    batch size reuses its graph. Losses and gradients equal the references'.

    Backend "eager": Dynamo's capture (of the forward and of the autograd.Function's
    backward) is what is tested; tracing the grid's 32 losses takes ~20 s with it,
    ~40 s with "aot_eager", and inductor would compile C++ on top."""
    import torch._dynamo
    import torch._dynamo.testing

    smoothloss.backends.framework(torch.empty(0))  # bind eagerly: Dynamo cannot trace the first import
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(
        lambda *a: _grid_losses(_ours_loss, *a), backend=counter, fullgraph=True, dynamic=True
    )
    config = {"specialize_float": True} if _ISFINITE_ON_OPTIONS else {}  # see test_compile_symbolic_float_options
    with torch._dynamo.config.patch(**config):
        for batch, seed in ((4, 0), (7, 1)):
            x, y, y_ignored, p, w = _grid_inputs(batch, seed)
            xs = x.expand(len(GRID), *x.shape).clone().requires_grad_()
            ps = p.expand(len(GRID), *p.shape).clone().requires_grad_()
            outs = compiled(xs, y, y_ignored, ps, w)
            grads = torch.autograd.grad(sum(out.sum() for out in outs), (xs, ps))
            _check_grid(outs, grads, x, y, y_ignored, p, w)
    assert counter.frame_count == 1


def _dynamo_unsupported() -> type[BaseException]:
    import torch._dynamo.exc

    return torch._dynamo.exc.Unsupported


@pytest.mark.xfail(
    _ISFINITE_ON_OPTIONS, raises=_dynamo_unsupported(), strict=True,
    reason="smoothloss/_validation.py check_nonnegative/check_softcap call math.isfinite on Dynamo's "
    "symbolic floats (torch.compile(dynamic=True)): use 0.0 <= value < math.inf and 0.0 < value < math.inf",
)
def test_compile_symbolic_float_options():
    """torch.compile(dynamic=True) of the drop-in module: its float options (module
    attributes) are symbolic floats to Dynamo."""
    import torch._dynamo

    smoothloss.backends.framework(torch.empty(0))
    torch._dynamo.reset()
    module = st.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-3, softcap=4.0)
    compiled = torch.compile(module, backend="eager", fullgraph=True, dynamic=True)
    x, y, _, _, _ = _grid_inputs(4, 2)
    x.requires_grad_()
    out = compiled(x, y)
    ref = plain_reference(x, y, None, label_smoothing=0.1, z_loss=1e-3, softcap=4.0)
    assert_close((out, torch.autograd.grad(out, x)), (ref, torch.autograd.grad(ref, x)))


class _GridModel(torch.nn.Module):
    """A linear head and one smoothloss.torch.CrossEntropyLoss per (option set, kind)."""

    def __init__(self, w: Any) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        self.head = torch.nn.Linear(3, K, dtype=DTYPE)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(K, 3, generator=gen, dtype=DTYPE))
            self.head.bias.copy_(torch.randn(K, generator=gen, dtype=DTYPE))
        self.losses = torch.nn.ModuleList(
            st.CrossEntropyLoss(weight=w if c.weighted else None, **_module_options(c)) for c in GRID
        )

    def forward(self, h: Any, y: Any, y_ignored: Any, p: Any) -> list[Any]:
        x = self.head(h)
        out = []
        for case, loss in zip(GRID, self.losses):
            t = p if case.kind == "prob" else y_ignored if case.spec.get("ignore") else y
            out.append(loss(x, t))
        return out


def _old_torch_compile() -> bool:
    """A torch whose torch.compile has no ``recompile_limit`` (2.7 is one; 2.13 is not)."""
    return "recompile_limit" not in inspect.signature(torch.compile).parameters


@pytest.mark.xfail(
    _old_torch_compile(), strict=True, raises=RuntimeError,
    reason="this torch's torch.export drops the autograd.Function's backward: the exported losses have no "
    "gradient (docs/errors.md, 'Older releases')",
)
def test_export_module_using_the_loss():
    """torch.export.export of a model whose forward is a linear head and the grid's
    losses; the exported program's losses and gradients (in the head's input) equal the
    references' on the head's logits."""
    _, y, y_ignored, p, w = _grid_inputs(4, 3)
    model = _GridModel(w)
    h = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    exported = torch.export.export(model, (h, y, y_ignored, p)).module()
    h1 = h.clone().requires_grad_()
    outs = exported(h1, y, y_ignored, p)
    x = model.head(h1)
    refs = _grid_losses(_ref_loss, [x] * len(GRID), y, y_ignored, [p] * len(GRID), w)
    for case, out, ref in zip(GRID, outs, refs):
        ours_g = torch.autograd.grad(out.sum(), h1, retain_graph=True)
        ref_g = torch.autograd.grad(ref.sum(), h1, retain_graph=True)
        assert_close((out.detach(), ours_g), (ref.detach(), ref_g))


# ---------------------------------------------------------------- the linear loss
def _linear_inputs(reduction: str = "mean") -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(21)
    h = torch.randn(5, 3, generator=gen, dtype=DTYPE)
    W = torch.randn(K, 3, generator=gen, dtype=DTYPE)
    b = torch.randn(K, generator=gen, dtype=DTYPE)
    y = torch.tensor([0, IGNORE, 3, 1, 4])
    opts = dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0, ignore_index=IGNORE, reduction=reduction, chunk_size=2)
    return h, W, b, y, opts


def _dense(h: Any, W: Any, b: Any, y: Any, opts: dict[str, Any]) -> Any:
    dense_opts = {k: v for k, v in opts.items() if k != "chunk_size"}
    return smoothloss.cross_entropy(h @ W.T + b, y, **dense_opts)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_double_backward_raises(reduction):
    """First derivatives equal the dense loss's and the plain reference's; differentiating
    them again raises a RuntimeError saying so, whether or not the cotangent requires
    grad (never a silent 0)."""
    h, W, b, y, opts = _linear_inputs(reduction)
    leaves = [a.clone().requires_grad_() for a in (h, W, b)]
    loss = smoothloss.linear_cross_entropy(leaves[0], leaves[1], y, bias=leaves[2], **opts)
    dense = _dense(*leaves, y, opts)
    ref_opts = {k: v for k, v in opts.items() if k != "chunk_size"}
    ref = plain_reference(leaves[0] @ leaves[1].T + leaves[2], y, None, **ref_opts)
    assert_close(loss.detach(), ref.detach())
    v = torch.linspace(0.5, 1.5, loss.numel(), dtype=DTYPE).reshape(loss.shape)
    grads = torch.autograd.grad((loss * v).sum(), leaves, create_graph=True)
    assert_close(tuple(g.detach() for g in grads), torch.autograd.grad((ref * v).sum(), leaves, retain_graph=True))
    assert_close(tuple(g.detach() for g in grads), torch.autograd.grad((dense * v).sum(), leaves))
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(grads[0].sum(), leaves[0])
    # a cotangent that itself requires grad (a learned loss scale)
    s = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    loss = smoothloss.linear_cross_entropy(leaves[0], leaves[1], y, bias=leaves[2], **opts)
    (g_h,) = torch.autograd.grad((loss * v).sum() * s, leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(g_h.sum(), s)
    # and the module drop-in, in a gradient penalty
    loss = st.LinearCrossEntropyLoss(label_smoothing=0.1, reduction=reduction)(leaves[1], leaves[0], y, leaves[2])
    (g_w,) = torch.autograd.grad(loss.sum(), leaves[1], create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        (g_w**2).sum().backward()


def test_linear_under_torch_func_raises():
    """torch.func.grad, vmap and jacfwd of the linear loss raise a RuntimeError naming
    torch.func (its gradient is made chunk by chunk for torch.autograd only); the
    dense loss on the same logits is the way under torch.func, and equals autograd of
    the linear loss."""
    h, W, b, y, opts = _linear_inputs()
    f = lambda h, W, b: smoothloss.linear_cross_entropy(h, W, y, bias=b, **opts)  # noqa: E731
    transforms = [
        (grad(f, argnums=(0, 1, 2)), h),
        (jacrev(f, argnums=(0, 1, 2)), h),
        (jacfwd(f, argnums=(0, 1, 2)), h),
        (vmap(f, in_dims=(0, None, None)), h[None]),
    ]
    for transform, hidden in transforms:
        with pytest.raises(RuntimeError, match="does not support torch.func"):
            transform(hidden, W, b)
    leaves = [a.clone().requires_grad_() for a in (h, W, b)]
    autograd = torch.autograd.grad(f(*leaves), leaves)
    assert_close(autograd, grad(lambda *a: _dense(*a, y, opts), argnums=(0, 1, 2))(h, W, b))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_gradcheck_batched_first_order(reduction):
    """First derivatives of the linear loss against finite differences, with batched
    gradients (vmap over the cotangents)."""
    h, W, b, y, opts = _linear_inputs(reduction)
    inputs = tuple(a.clone().requires_grad_() for a in (h, W, b))
    f = lambda h, W, b: smoothloss.linear_cross_entropy(h, W, y, bias=b, **opts)  # noqa: E731
    ref_opts = {k: v for k, v in opts.items() if k != "chunk_size"}
    assert_close(f(*inputs).detach(), plain_reference(h @ W.T + b, y, None, **ref_opts))
    assert torch.autograd.gradcheck(f, inputs, check_batched_grad=True, fast_mode=True)
