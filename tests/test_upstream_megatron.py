"""Megatron-core's own tests of ``vocab_parallel_cross_entropy``, ported to
``smoothloss.torch.vocab_parallel_cross_entropy`` on CPU processes with gloo, and a
side-by-side run against the real Megatron function where megatron-core imports.

Upstream: NVIDIA/Megatron-LM ``tests/unit_tests/tensor_parallel/test_cross_entropy.py``
at commit d98e8a64ddf34856e74b24714e3bedb2f5a39553 (the file last changed in
4a47b160c0d17e81c1d569980a6148e93d580d51), testing
``megatron/core/tensor_parallel/cross_entropy.py`` of the same commit. Its three tests
and how they run here:

* ``test_vocab_parallel_cross_entropy``: tensor-parallel size 4 (``Utils.
  initialize_model_parallel(4, 2)``, 8 GPUs; the pipeline size does not enter the
  loss), logits ``torch.range(0, 7).repeat(16, 4)`` on every rank, targets
  ``arange(0, 32, 2)``, the listed expected values compared after ``torch.round``. Here:
  4 gloo processes, the same inputs, the same rounded comparison, and the closed form
  ``log(16·Σ_{k<8} e^k) - (y mod 8)`` (every rank holds four copies of 0..7).
* ``test_vocab_parallel_cross_entropy_uses_explicit_tp_group``: a one-rank ``tp_group``
  given explicitly receives every all-reduce, and parallel_state is never asked; the
  loss equals the unsmoothed cross-entropy. Here: one gloo process, a real one-rank group
  from ``new_group``, ``torch.distributed.all_reduce`` spied on, a stand-in
  ``megatron.core.parallel_state`` whose getters fail, and the closed form ``lse - x_y``.
* ``test_language_module_unfused_loss_passes_tp_group``: ``LanguageModule.
  compute_language_model_loss`` calls the function as ``(logits, labels, tp_group=...)``
  with [s, b, V] logits and [s, b] labels. Here: the signature takes that call (and
  Megatron's positional order), and, where megatron-core imports, Megatron's own
  ``compute_language_model_loss`` runs with our function swapped in.

Side by side (``megatron-core`` installed, ``pip install --no-deps megatron-core``; not a
dependency of smoothloss): at tensor-parallel sizes 1, 2 and 4 over
``parallel_state.initialize_model_parallel``, value and gradient. Without smoothing, and
with smoothing at size 1, the numbers are Megatron's; with smoothing at sizes 2 and 4
Megatron's are its local-shard formula (written in float64 in
``tests/test_vocab_parallel.py``) and ours the unsharded loss: the documented difference
(Megatron-LM issue 737). Megatron computes in float32 (``.float()``), so the
side-by-side tolerance is float32's.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_vocab_parallel import megatron_reference, unsharded_others_reference  # noqa: E402

# test_vocab_parallel_cross_entropy's expected_output
UPSTREAM_EXPECTED = [10.2309, 8.2309, 6.2309, 4.2309] * 4
F32 = dict(rtol=2e-6, atol=2e-6)


def _upstream_closed_form() -> np.ndarray:
    y = np.arange(0, 32, 2)
    return math.log(16 * sum(math.exp(k) for k in range(8))) - (y % 8)


def _side_by_side_data(world: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    K = 8 * world
    return rng.normal(scale=2.0, size=(5, 2, K)).astype(np.float32), rng.integers(0, K, size=(5, 2))


def _megatron():
    """Megatron's function and its language module (imported in the worker)."""
    from megatron.core.models.common.language_module import language_module
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    return vocab_parallel_cross_entropy, language_module


def _worker(rank: int, world: int, init_method: str, out_dir: str) -> None:
    import types
    import warnings
    from types import SimpleNamespace

    from smoothloss.torch import vocab_parallel_cross_entropy as ours

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    results: dict = {}
    try:
        if world == 4:  # upstream test_vocab_parallel_cross_entropy, ours
            logits = torch.arange(0, 8, dtype=torch.float32).repeat(16, 4)  # = torch.range(0, 7).repeat(16, 4)
            results["upstream"] = ours(logits, torch.arange(0, 32, 2)).numpy()
        if world == 1:  # upstream ..._uses_explicit_tp_group
            tp_group = dist.new_group([0])
            seen = []
            real_all_reduce = dist.all_reduce

            def spy(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
                seen.append(group)
                return real_all_reduce(tensor, op=op, group=group, async_op=async_op)

            def fail(*args, **kwargs):
                raise AssertionError("explicit tp_group should avoid parallel_state")

            fake = types.ModuleType("megatron.core.parallel_state")
            fake.model_parallel_is_initialized = fail
            fake.get_tensor_model_parallel_group = fail
            saved = sys.modules.get("megatron.core.parallel_state")
            sys.modules["megatron.core.parallel_state"] = fake
            dist.all_reduce = spy
            try:
                x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 1.0]])
                results["explicit"] = ours(x, torch.tensor([2, 0]), tp_group=tp_group).numpy()
            finally:
                dist.all_reduce = real_all_reduce
                if saved is None:
                    del sys.modules["megatron.core.parallel_state"]
                else:
                    sys.modules["megatron.core.parallel_state"] = saved
            results["explicit groups"] = [g is tp_group for g in seen]

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its import warns that Apex and TE are missing
                from megatron.core import parallel_state as ps

                theirs, language_module = _megatron()
        except Exception:
            results["megatron"] = "megatron-core does not import: " + traceback.format_exc(limit=1).strip()
        else:
            ps.initialize_model_parallel(tensor_model_parallel_size=world)
            tp = ps.get_tensor_model_parallel_group()
            x, y = _side_by_side_data(world)
            v = x.shape[-1] // world
            shard, target = x[..., rank * v:(rank + 1) * v], torch.from_numpy(y)
            for eps in (0.0, 0.1):
                for who, fn in (("megatron", theirs), ("ours", ours), ("ours tp_group", None)):
                    t = torch.from_numpy(shard.copy()).requires_grad_(True)
                    if fn is None:
                        loss = ours(t, target, eps, tp_group=tp)
                    else:  # no group: Megatron's own default, parallel_state's group
                        loss = fn(t.clone() if fn is theirs else t, target, eps)  # (Megatron writes into its input)
                    loss.backward(torch.ones_like(loss))
                    results[(who, eps)] = (loss.detach().numpy(), t.grad.numpy())
            if world == 4:
                logits = torch.arange(0, 8, dtype=torch.float32).repeat(16, 4)
                results["upstream megatron"] = theirs(logits, torch.arange(0, 32, 2)).numpy()
            # Megatron's own call site, our function swapped in
            language_module.tensor_parallel.vocab_parallel_cross_entropy = ours
            module = SimpleNamespace(config=SimpleNamespace(cross_entropy_loss_fusion=False), tp_group=tp)
            labels = torch.from_numpy(y.T.copy())  # [b, s]
            results["language module"] = language_module.LanguageModule.compute_language_model_loss(
                module, labels=labels, logits=torch.from_numpy(shard.copy())
            ).numpy()
            ps.destroy_model_parallel()
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.array(results, dtype=object), allow_pickle=True)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # (see tests/test_vocab_parallel.py's _torch_worker)


_RUNS: dict[int, list[dict]] = {}


def _run(world: int, tmp_path_factory) -> list[dict]:
    """Every rank's results, one spawn per world size for the whole module."""
    if world not in _RUNS:
        import torch.multiprocessing as mp

        if not dist.is_available() or not dist.is_gloo_available():
            pytest.skip("torch.distributed with gloo is not available")
        folder = tmp_path_factory.mktemp(f"megatron{world}")
        mp.spawn(_worker, args=(world, f"file://{folder / 'rendezvous'}", str(folder)), nprocs=world, join=True)
        _RUNS[world] = [np.load(folder / f"rank{r}.npy", allow_pickle=True).item() for r in range(world)]
    return _RUNS[world]


def _require_megatron(results: dict) -> None:
    if isinstance(results.get("megatron"), str):
        pytest.skip(results["megatron"] + " (pip install --no-deps megatron-core)")


def test_vocab_parallel_cross_entropy(tmp_path_factory):
    expected = torch.tensor(UPSTREAM_EXPECTED)
    closed = _upstream_closed_form()
    # the port's closed form is upstream's list to its four decimals
    np.testing.assert_allclose(closed, UPSTREAM_EXPECTED, rtol=0, atol=1e-4)
    for rank, results in enumerate(_run(4, tmp_path_factory)):
        output = torch.from_numpy(results["upstream"])
        assert torch.equal(torch.round(expected), torch.round(output)), rank
        np.testing.assert_allclose(results["upstream"], closed, rtol=1e-6)


def test_vocab_parallel_cross_entropy_uses_explicit_tp_group(tmp_path_factory):
    (results,) = _run(1, tmp_path_factory)
    closed = [math.log(math.e + math.e**2 + math.e**3) - 3.0, math.log(math.exp(0.5) + math.exp(-0.5) + math.e) - 0.5]
    np.testing.assert_allclose(results["explicit"], closed, rtol=1e-6)
    assert results["explicit groups"] and all(results["explicit groups"])  # every collective on tp_group


def test_language_module_unfused_loss_call_is_accepted():
    """``(logits, labels, tp_group=...)`` and Megatron's positional order bind."""
    import inspect

    from smoothloss.torch import vocab_parallel_cross_entropy

    sig = inspect.signature(vocab_parallel_cross_entropy)
    bound = sig.bind(torch.zeros(3, 2, 4), torch.zeros(3, 2, dtype=torch.int64), tp_group="tp")
    assert bound.arguments["tp_group"] == "tp"
    bound = sig.bind(torch.zeros(3, 2, 4), torch.zeros(3, 2, dtype=torch.int64), 0.1, "tp")
    assert bound.arguments["label_smoothing"] == 0.1 and bound.arguments["tp_group"] == "tp"


@pytest.mark.parametrize("world", [1, 2, 4])
def test_side_by_side_with_megatron_core(world, tmp_path_factory):
    per_rank = _run(world, tmp_path_factory)
    _require_megatron(per_rank[0])
    x, y = _side_by_side_data(world)
    x64 = x.astype(np.float64)
    for eps in (0.0, 0.1):
        ref, ref_g = unsharded_others_reference(x64, y, eps)
        meg, meg_g = megatron_reference(x64, y, eps, world)
        for r, results in enumerate(per_rank):
            (theirs, theirs_g), (mine, mine_g) = results[("megatron", eps)], results[("ours", eps)]
            what = f"world={world} ε={eps} rank={r}"
            assert theirs.shape == mine.shape == y.shape and theirs.dtype == mine.dtype == np.float32, what
            # the float64 formula of Megatron's source is what megatron-core computes
            np.testing.assert_allclose(theirs, meg[r], **F32, err_msg=what)
            np.testing.assert_allclose(theirs_g, meg_g[r], **F32, err_msg=what)
            # ours: the unsharded loss, with no group (parallel_state's) or with tp_group
            np.testing.assert_allclose(mine, ref, **F32, err_msg=what)
            np.testing.assert_allclose(results[("ours tp_group", eps)][0], mine, rtol=0, atol=0, err_msg=what)
            np.testing.assert_allclose(mine_g, ref_g[..., r * 8:(r + 1) * 8], **F32, err_msg=what)
            if world == 1 or eps == 0:
                np.testing.assert_allclose(mine, theirs, **F32, err_msg=what)
                np.testing.assert_allclose(mine_g, theirs_g, **F32, err_msg=what)
            else:  # Megatron-LM issue 737: the local shard's smoothing
                assert np.max(np.abs(mine - theirs)) > 1e-3, what
            # Megatron's call site: [s, b] losses transposed to [b, s], no smoothing
            np.testing.assert_allclose(results["language module"], unsharded_others_reference(x64, y, 0.0)[0].T, **F32)
    if world == 4:
        for results in per_rank:
            np.testing.assert_allclose(results["upstream megatron"], results["upstream"], **F32)
