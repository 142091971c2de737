"""What gradient filtering (``filter_eps``) buys and what it changes, on PyTorch.

``python -m smoothloss.bench.filtering --sizes 4096x512x32768,2048x1024x128256 --threads 2``

For each size N×H×V and each of two kinds of data, one process measures the forward and
backward of ``smoothloss.torch``'s chunked ``linear_cross_entropy`` (mean, every 10th
label ignored) without the filter, with ``filter_eps="auto"`` (the dtype's epsilon /
32) and with a coarse 1e-5, interleaved, median of ``--repeats``; the dense
``F.cross_entropy(h @ W.T)`` too, as the framework's own reference. What it changes: the
loss (bit for bit, the forward is not filtered) and the three gradients' largest and
relative (Frobenius) errors against the unfiltered ones, and the share of 128×128
blocks skipped (counted from the dense probabilities, as the filter's definition).

The data:

* ``gaussian``: h ~ N(0, 1), W ~ N(0, 1/H): nearly uniform probabilities, nothing is
  skipped; the filter's cost alone.
* ``sorted-vocab``: the same plus a per-class prior falling as -3·log(1 + c) (the
  vocabulary ordered by frequency, the structure Cut Cross-Entropy's vocabulary sorting
  creates) with noise of std ~2 per logit, labels drawn near the head of the vocabulary:
  most blocks of rare classes hold probabilities far below the threshold for every row.

Synthetic, both: the share of blocks a real model skips depends on its logits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from smoothloss.bench.common import apply_threads, loadavg

BLOCK = 128
FILTERS: tuple[tuple[str, Any], ...] = (("exact", None), ("auto", "auto"), ("1e-5", 1e-5))


def _data(torch: Any, n: int, h: int, v: int, kind: str, dtype: Any, seed: int = 0) -> tuple[Any, Any, Any]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) / h ** 0.5
    labels = torch.randint(0, v, (n,), generator=g)
    if kind == "sorted-vocab":
        weight *= 2.0  # logit noise of std ~2
        hidden[:, -1] = 1.0
        weight[:, -1] = -3.0 * torch.log1p(torch.arange(v, dtype=torch.float32))
        labels = torch.minimum(torch.distributions.Geometric(probs=0.02).sample((n,)).long(),
                               torch.tensor(v - 1))
    labels[::10] = -100
    return hidden.to(dtype), weight.to(dtype), labels


def _skipped_share(torch: Any, hidden: Any, weight: Any, labels: Any, eps: float) -> float:
    """The share of 128×128 blocks whose every valid row's probability is below ``eps``
    and which hold no valid row's label, from the dense probabilities, 128 rows at a time."""
    skipped = total = 0
    v = weight.shape[0]
    for r in range(0, hidden.shape[0], BLOCK):
        z = (hidden[r:r + BLOCK].double() @ weight.double().T)
        y = labels[r:r + BLOCK]
        p = torch.softmax(z, dim=-1)[y != -100]
        for c in range(0, v, BLOCK):
            total += 1
            has_label = bool(((y >= c) & (y < c + BLOCK)).any())
            if not has_label and (p.numel() == 0 or float(p[:, c:c + BLOCK].max()) < eps):
                skipped += 1
    return skipped / total


def measure(size: tuple[int, int, int], kind: str, dtype_name: str, repeats: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    import smoothloss

    n, h, v = size
    dtype = getattr(torch, dtype_name)
    hidden, weight, labels = _data(torch, n, h, v, kind, dtype)

    def step(filter_eps: Any) -> tuple[Any, list[Any]]:
        x = hidden.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        loss = smoothloss.linear_cross_entropy(x, w, labels, ignore_index=-100, filter_eps=filter_eps)
        loss.backward()
        return loss.detach(), [x.grad, w.grad]

    def dense() -> None:
        x = hidden.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        F.cross_entropy((x @ w.T).float(), labels, ignore_index=-100).backward()

    runs = {name: (lambda f=f: step(f)) for name, f in FILTERS}
    runs["F.cross_entropy"] = dense
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    exact_loss, exact_grads = step(None)
    rec: dict[str, Any] = {"size": list(size), "data": kind, "dtype": dtype_name, "repeats": repeats,
                           "seconds": {name: statistics.median(t) for name, t in times.items()}, "filters": {}}
    auto_eps = torch.finfo(dtype).eps / 32
    for name, f in FILTERS[1:]:
        loss, grads = step(f)
        errors = {}
        for what, g, e in zip(("d_hidden", "d_weight"), grads, exact_grads):
            diff = (g.double() - e.double())
            errors[what] = {"max_abs": float(diff.abs().max()), "max_abs_exact": float(e.double().abs().max()),
                            "rel_fro": float(diff.norm() / e.double().norm())}
        eps = auto_eps if f == "auto" else f
        rec["filters"][name] = {
            "eps": eps, "loss_equal": bool(torch.equal(loss, exact_loss)), "errors": errors,
            "skipped_share": _skipped_share(torch, hidden, weight, labels, eps),
            "time_ratio": rec["seconds"][name] / rec["seconds"]["exact"],
        }
    rec["exact_vs_dense"] = rec["seconds"]["exact"] / rec["seconds"]["F.cross_entropy"]
    return rec


def table(records: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`measure`'s records."""
    rows = ["| N×H×V | dtype | data | filter_eps | blocks skipped | time s (× exact) | exact s (× F.cross_entropy) "
            "| d_weight rel. error | d_hidden rel. error | loss |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for rec in records:
        n, h, v = rec["size"]
        for name, f in rec["filters"].items():
            rows.append(
                f"| {n}×{h}×{v} | {rec['dtype']} | {rec['data']} | {name} ({f['eps']:.1e}) | "
                f"{100 * f['skipped_share']:.1f}% | {rec['seconds'][name]:.2f} ({f['time_ratio']:.2f}×) | "
                f"{rec['seconds']['exact']:.2f} ({rec['exact_vs_dense']:.2f}×) | "
                f"{f['errors']['d_weight']['rel_fro']:.1e} | {f['errors']['d_hidden']['rel_fro']:.1e} | "
                f"{'unchanged' if f['loss_equal'] else 'CHANGED'} |"
            )
    return "\n".join(rows)


def _size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a size is NxHxV, got {text!r}")
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smoothloss.bench.filtering", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="4096x512x32768", help="comma-separated NxHxV (default 4096x512x32768)")
    p.add_argument("--data", default="gaussian,sorted-vocab", help="comma-separated: gaussian, sorted-vocab")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the records here")
    args = p.parse_args(argv)
    sizes = [_size(s) for s in args.sizes.split(",")]
    kinds = args.data.split(",")
    if any(k not in ("gaussian", "sorted-vocab") for k in kinds) or args.repeats < 1:
        p.error("--data takes gaussian and sorted-vocab; --repeats at least 1")
    apply_threads("torch", args.threads)
    records = []
    for size in sizes:
        for kind in kinds:
            records.append(measure(size, kind, args.dtype, args.repeats))
            print(json.dumps(records[-1]), flush=True)
    print(f"load average: {loadavg()}")
    print(table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
