"""The vocab-parallel linear loss (the head (K, H) sharded by class, hidden replicated)
equals the unsharded chunked linear loss on every rank, in value and in every gradient.

PyTorch: 2 and 4 processes on gloo. JAX: ``shard_map`` over 2 and 4 host CPU devices
(a subprocess, since the device count is fixed before JAX starts). float64 throughout,
tolerance 1e-10; chunks of 4 of the 15 rows, so several chunks and a shorter last one.
The reference is the unsharded ``linear_cross_entropy`` of the same framework, whose
own numbers the linear and conformance suites check against float64 references.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TOL = 1e-10
N, H, K = 15, 6, 16  # rows; hidden size; classes, divisible by 2 and 4
CHUNK = 4
IGNORE = -100
# (options, with a bias); every case runs every reduction
CASES = [
    ({}, False),
    ({"label_smoothing": 0.2, "ignore_index": IGNORE, "z_loss": 1e-3}, True),
    ({"label_smoothing": 0.3, "convention": "others", "ignore_index": IGNORE}, False),
    ({"label_smoothing": 0.1, "softcap": 3.0, "kl": True, "ignore_index": IGNORE}, True),
]
REDUCTIONS = ["none", "sum", "mean"]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(N, H))
    weight = rng.normal(scale=0.8, size=(K, H))
    bias = rng.normal(size=(K,))
    labels = rng.integers(0, K, size=(N,))
    labels[[1, 9]] = IGNORE
    return hidden, weight, bias, labels


def _labels(labels: np.ndarray, options: dict) -> np.ndarray:
    return labels if options.get("ignore_index") is not None else np.where(labels == IGNORE, 3, labels)


def _cotangent(n: int) -> np.ndarray:
    """A non-uniform cotangent for reduction="none"."""
    return np.arange(1.0, 1.0 + n)


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _check(world: int, per_rank: list, reference: dict) -> None:
    """Every rank's loss and d_hidden equal the unsharded ones; the ranks' d_weight and
    d_bias rows, stacked, equal the unsharded ones."""
    for key, (loss, d_h, d_w, d_b) in reference.items():
        what = f"world={world} case={CASES[key[0]]} reduction={key[1]}"
        for r in range(world):
            got = per_rank[r][key]
            np.testing.assert_allclose(got[0], loss, rtol=0, atol=TOL, err_msg=what)
            np.testing.assert_allclose(got[1], d_h, rtol=0, atol=TOL, err_msg=what)
        np.testing.assert_allclose(np.concatenate([p[key][2] for p in per_rank]), d_w, rtol=0, atol=TOL, err_msg=what)
        if d_b is not None:
            np.testing.assert_allclose(np.concatenate([p[key][3] for p in per_rank]), d_b, rtol=0, atol=TOL,
                                       err_msg=what)


# --------------------------------------------------------------------------- PyTorch


def _torch_run(fn, hidden_np, weight_np, bias_np, labels_np):
    """``{(case, reduction): (loss, d_hidden, d_weight, d_bias)}`` of ``fn(h, W, y, bias=, chunk_size=, **opts)``."""
    import torch

    results = {}
    for i, (options, with_bias) in enumerate(CASES):
        y = torch.from_numpy(_labels(labels_np, options))
        for red in REDUCTIONS:
            h = torch.from_numpy(hidden_np.copy()).requires_grad_(True)
            w = torch.from_numpy(weight_np.copy()).requires_grad_(True)
            b = torch.from_numpy(bias_np.copy()).requires_grad_(True) if with_bias else None
            loss = fn(h, w, y, bias=b, chunk_size=CHUNK, reduction=red, **options)
            cot = torch.from_numpy(_cotangent(loss.numel())).reshape(loss.shape)
            (loss * cot).sum().backward()
            results[(i, red)] = (
                loss.detach().numpy(), h.grad.numpy(), w.grad.numpy(), None if b is None else b.grad.numpy()
            )
    return results


def _torch_worker(rank: int, world: int, init_method: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from smoothloss.torch import vocab_parallel_linear_cross_entropy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        hidden, weight, bias, labels = _data()
        v = K // world
        rows = slice(rank * v, (rank + 1) * v)
        results = _torch_run(vocab_parallel_linear_cross_entropy, hidden, weight[rows], bias[rows], labels)
        # first derivatives only, as the unsharded loss: a second one raises, so does torch.func
        h = torch.from_numpy(hidden).requires_grad_(True)
        w = torch.from_numpy(weight[rows].copy()).requires_grad_(True)
        (d_h,) = torch.autograd.grad(vocab_parallel_linear_cross_entropy(h, w, torch.from_numpy(labels % K)), h,
                                     create_graph=True)
        try:
            d_h.sum().backward()
        except RuntimeError as e:
            results["second"] = str(e)
        try:
            torch.func.grad(lambda w: vocab_parallel_linear_cross_entropy(h, w, torch.from_numpy(labels % K)))(w)
        except RuntimeError as e:
            results["func"] = str(e)
        # unequal shards: every rank refuses, none computes a wrong loss
        uneven = weight[: v + (1 if rank == 0 else 0)]
        try:
            vocab_parallel_linear_cross_entropy(torch.from_numpy(hidden), torch.from_numpy(uneven),
                                                torch.from_numpy(labels % v))
        except ValueError as e:
            results["uneven"] = str(e)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.array(results, dtype=object), allow_pickle=True)
    finally:
        dist.destroy_process_group()
    # leave without the interpreter's teardown (see test_vocab_parallel._torch_worker)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("world", [2, 4])
def test_torch_distributed_linear_matches_unsharded(world: int, tmp_path: Path) -> None:
    _require("torch")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from smoothloss import linear_cross_entropy

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_torch_worker, args=(world, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=world, join=True)
    per_rank = [np.load(tmp_path / f"rank{r}.npy", allow_pickle=True).item() for r in range(world)]
    _check(world, per_rank, _torch_run(linear_cross_entropy, *_data()))
    for r in range(world):
        assert "same number of classes" in per_rank[r].get("uneven", ""), per_rank[r].get("uneven")
        assert "first derivatives only" in per_rank[r].get("second", ""), per_rank[r].get("second")
        assert "does not support torch.func" in per_rank[r].get("func", ""), per_rank[r].get("func")


def test_torch_linear_requires_process_group() -> None:
    _require("torch")
    import torch
    import torch.distributed as dist

    from smoothloss.torch import vocab_parallel_linear_cross_entropy

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_linear_cross_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.int64))


# --------------------------------------------------------------------------- JAX

_JAX_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    from smoothloss.jax import linear_cross_entropy, vocab_parallel_linear_cross_entropy

    sys.path.insert(0, {tests!r})
    from test_vocab_parallel_linear import CASES, CHUNK, REDUCTIONS, _cotangent, _data, _labels

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:
        from jax.experimental.shard_map import shard_map
    world = {world}
    mesh = Mesh(np.array(jax.devices()[:world]), ("v",))
    hidden_np, weight_np, bias_np, labels_np = _data()
    h, w, b = jnp.asarray(hidden_np), jnp.asarray(weight_np), jnp.asarray(bias_np)
    results, reference = {{}}, {{}}
    for i, (options, with_bias) in enumerate(CASES):
        y = jnp.asarray(_labels(labels_np, options))
        for red in REDUCTIONS:
            kw = dict(chunk_size=CHUNK, reduction=red, **options)

            def total(loss):
                return jnp.sum(loss * jnp.asarray(_cotangent(loss.size)).reshape(loss.shape))

            def plain(h, w, b):
                return linear_cross_entropy(h, w, y, bias=b if with_bias else None, **kw)

            def local(h, w, b, y):  # one shard's loss, and every shard's own copy of it
                loss = vocab_parallel_linear_cross_entropy(
                    h, w, y, bias=b if with_bias else None, axis_name="v", **kw)
                return loss, loss[None]

            sharded = shard_map(local, mesh=mesh, in_specs=(P(), P("v"), P("v"), P()), out_specs=(P(), P("v")))
            loss, every = jax.jit(sharded)(h, w, b, y)
            grads = jax.jit(jax.grad(lambda h, w, b: total(sharded(h, w, b, y)[0]), argnums=(0, 1, 2)))(h, w, b)
            ref = plain(h, w, b)
            ref_g = jax.grad(lambda h, w, b: total(plain(h, w, b)), argnums=(0, 1, 2))(h, w, b)
            tol = dict(rtol=0, atol=1e-10, err_msg=str((world, options, red)))
            np.testing.assert_allclose(np.asarray(loss), np.asarray(ref), **tol)
            for r in range(world):  # every shard's loss, before out_specs keeps one
                np.testing.assert_allclose(np.asarray(every[r]), np.asarray(ref), **tol)
            for got, want in zip(grads, ref_g):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)
            results[(i, red)] = True
    print("OK", len(results))
    """
)


@pytest.mark.parametrize("world", [2, 4])
def test_jax_shard_map_linear_matches_unsharded(world: int, tmp_path: Path) -> None:
    _require("jax")
    script = tmp_path / "vocab_parallel_linear_jax.py"
    script.write_text(_JAX_SCRIPT.format(tests=str(Path(__file__).parent), world=world))
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={world}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert f"OK {len(CASES) * len(REDUCTIONS)}" in proc.stdout
