"""Peak memory and time of forward+backward: chunked linear cross-entropy vs the unchunked path.

Each measurement runs in a fresh subprocess (torch, float32, CPU) so that its peak resident
set size (``ru_maxrss``) is its own::

    python -m smoothloss._bench_linear 8192 1024 65536        # N H V [chunk_size]

The unchunked path is ``cross_entropy(hidden @ weight.T, labels)``, whose N×V logits and
their gradient exist at once; the chunked path is ``linear_cross_entropy``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any


def measure(mode: str, n: int, h: int, v: int, chunk: int | None) -> dict[str, Any]:
    """One forward+backward in this process; peak RSS in MiB (Linux reports KiB)."""
    import torch

    import smoothloss
    from smoothloss._linear import linear_cross_entropy

    torch.manual_seed(0)
    hidden = (torch.randn(n, h) * 0.1).requires_grad_(True)
    weight = (torch.randn(v, h) * 0.02).requires_grad_(True)
    labels = torch.randint(0, v, (n,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "chunked":
        loss = linear_cross_entropy(hidden, weight, labels, label_smoothing=0.1, chunk_size=chunk)
    else:
        loss = smoothloss.cross_entropy(hidden @ weight.T, labels, label_smoothing=0.1)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "loss": float(loss.detach()), "time_s": round(seconds, 3),
            "peak_mib": round(peak / 1024, 1), "peak_before_mib": round(before / 1024, 1)}


def main(argv: list[str]) -> int:
    """``N H V [chunk_size]``: print one JSON line per run and the chunked/unchunked ratios."""
    if argv and argv[0] == "--child":
        mode, n, h, v, chunk = argv[1], *(int(a) for a in argv[2:5]), argv[5]
        print(json.dumps(measure(mode, n, h, v, None if chunk == "None" else int(chunk))))
        return 0
    n, h, v = (int(a) for a in argv[:3])
    chunk = argv[3] if len(argv) > 3 else "None"
    runs = {}
    for mode in ("unchunked", "chunked"):
        out = subprocess.run(
            [sys.executable, "-m", "smoothloss._bench_linear", "--child", mode, str(n), str(h), str(v), chunk],
            capture_output=True, text=True, check=True,
        )
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(runs[mode]), flush=True)
    c, u = runs["chunked"], runs["unchunked"]
    print(f"N={n} H={h} V={v}: peak {c['peak_mib']:.0f} / {u['peak_mib']:.0f} MiB = "
          f"{c['peak_mib'] / u['peak_mib']:.2f}; time {c['time_s']:.2f} / {u['time_s']:.2f} s = "
          f"{c['time_s'] / u['time_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
