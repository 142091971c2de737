r"""Gradient filtering of the chunked linear loss (Cut Cross-Entropy's ``filter_eps``).

The logits' gradient of a row with per-row cotangent s (the reduction's scale included)
is, in closed form (:mod:`smoothloss._core`),

``g_c = s·(1 + 2·z_loss·lse)·p_c − s·off − [c = y]·s·(on − off)``,  ``p = softmax(z)``.

Filtering drops the softmax term ``s·(1 + 2·z_loss·lse)·p_c`` in the blocks of
``BLOCK`` rows × ``BLOCK`` classes where it is negligible, and keeps every other term:
a block is **skipped** when, for every row r of it, ``(1 + 2·z_loss·lse_r)·p_rc <
filter_eps`` at every class c of it (ignored rows count as below), and no row of it has
its label among the block's classes. A skipped block's gradient is then ``−s·off``
(0 without smoothing), so its entries differ from the exact ones by less than
``|s|·filter_eps``. Without smoothing and z-loss this is Cut Cross-Entropy's rule
(``|p − onehot| < filter_eps`` over the whole block), but for one case where CCE
skips and this does not: a block holding a label whose probability is within
filter_eps of 1.

Where the gradient of a skipped block is 0 (no smoothing) and the chunks run in a Python
loop (PyTorch, NumPy), the two backward products ``g @ W`` and ``g.T @ h`` skip the
block (one product per run of consecutive kept blocks). Elsewhere (JAX's ``scan``,
TensorFlow's ``while_loop``, label smoothing) the same gradient is formed with the
skipped blocks set in place and the products run whole: the same numbers, no time saved.

Blocks are counted from the first row (as given, ignored rows included) and the first
class: the row chunks are whole numbers of blocks, so the filtered gradient is the same
for every chunk size and on every framework.
"""

from __future__ import annotations

from typing import Any

from smoothloss._formulas import is_zero, smoothing_coefficients, soft_cap

__all__ = ["BLOCK", "Chunk", "kept_blocks", "peaks", "resolve", "skipped_fill"]

#: Rows and classes of a filtering block (one of Cut Cross-Entropy's Triton block shapes).
BLOCK = 128


class Chunk(int):
    """The rows per chunk of the chunked linear loss (an ``int``), with the gradient
    filter's threshold ``filter_eps`` (None: exact). Hashable and compared with both,
    so a compiled function keyed on it never mixes two thresholds."""

    filter_eps: float | None

    def __new__(cls, rows: int, filter_eps: float | None = None) -> "Chunk":
        chunk = super().__new__(cls, rows)
        chunk.filter_eps = filter_eps
        return chunk

    def __eq__(self, other: Any) -> bool:
        return int(self) == other and getattr(other, "filter_eps", None) == self.filter_eps

    def __hash__(self) -> int:
        return hash((int(self), self.filter_eps))

    def __repr__(self) -> str:
        return f"Chunk({int(self)}, filter_eps={self.filter_eps!r})"

    def __reduce__(self) -> Any:
        return Chunk, (int(self), self.filter_eps)


def resolve(filter_eps: Any, dtype_eps: float, opts: Any) -> float | None:
    """The threshold of ``filter_eps``: None (no filtering), a float >= 0, or ``"auto"``:
    ``dtype_eps / 32`` (CCE's rule; ``dtype_eps`` the machine epsilon of the inputs'
    dtype: 3.7e-9 in float32, 2.4e-4 in bfloat16). Refuses the one combination whose
    skipped blocks are not a closed form: softcap with label smoothing."""
    if filter_eps is None:
        return None
    if isinstance(filter_eps, str):
        if filter_eps != "auto":
            raise ValueError(f"filter_eps must be None, a float >= 0 or 'auto', got {filter_eps!r}")
        eps = dtype_eps / 32
    elif isinstance(filter_eps, bool) or not isinstance(filter_eps, (int, float)) or not 0 <= filter_eps < float("inf"):
        raise ValueError(f"filter_eps must be None, a float >= 0 or 'auto', got {filter_eps!r}")
    else:
        eps = float(filter_eps)
    if opts.softcap is not None and not is_zero(opts.label_smoothing):
        raise NotImplementedError(
            "filter_eps with both softcap and label_smoothing: a skipped block's smoothing term then "
            "varies with each logit; use one of them, or filter_eps=None"
        )
    return eps


def peaks(fw: Any, z: Any) -> Any:
    """Each row's largest logit in each block of classes: (C, ceil(V/BLOCK)), from the
    raw logits (a soft cap is monotone, so it is applied to the peaks afterwards)."""
    xp = fw.xp
    v = int(z.shape[-1])
    whole = v // BLOCK
    parts = []
    if whole:
        parts.append(fw.kernels.block_max(z if v == whole * BLOCK else z[:, : whole * BLOCK], BLOCK))
    if v % BLOCK:
        parts.append(xp.max(z[:, whole * BLOCK:], axis=-1, keepdims=True))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=-1)


def _valid(fw: Any, y: Any, opts: Any) -> Any:
    """Each row's validity (its label is not ``ignore_index``); ``y`` in the index dtype."""
    if opts.ignore_index is not None and fw.holds_index(opts.ignore_index):
        return y != opts.ignore_index
    return y == y


def _row_blocks(fw: Any, y: Any) -> Any:
    """Each row's block of rows, r // BLOCK, for the chunk's labels ``y`` (a run-time
    length where the chunk's is unknown)."""
    return fw.xp.arange(fw.dynamic_shape(y)[0], dtype=y.dtype, device=fw.device(y)) // BLOCK


def kept_blocks(
    fw: Any, peak: Any, labels: Any, stats: Any, opts: Any, eps: float, row_blocks: int
) -> Any:
    """(row_blocks, ceil(V/BLOCK)) bool: the blocks of a chunk that are not skipped (see
    the module docstring). ``peak`` from :func:`peaks`, ``labels`` the chunk's (C,),
    ``stats`` its rows' (m, lse_rel) from the forward; ``row_blocks`` at least
    ceil(C/BLOCK) (static where C is not: a TensorFlow graph's last chunk)."""
    xp = fw.xp
    acc = stats.dtype
    lse = stats[:, 0] + stats[:, 1]
    peak = soft_cap(xp, peak if peak.dtype == acc else xp.astype(peak, acc), opts.softcap)[0]
    p_max = xp.exp(peak - xp.expand_dims(lse, axis=-1))  # each row's largest probability in each block
    if not is_zero(opts.z_loss):
        p_max = p_max * xp.expand_dims(xp.abs(1.0 + 2.0 * opts.z_loss * lse), axis=-1)
    y = fw.index(labels)
    blocks = xp.arange(int(peak.shape[-1]), dtype=y.dtype, device=fw.device(y))
    at_label = xp.expand_dims(y // BLOCK, axis=-1) == blocks
    needed = ((p_max >= eps) | at_label) & xp.expand_dims(_valid(fw, y, opts), axis=-1)
    rows = xp.arange(row_blocks, dtype=y.dtype, device=fw.device(y))
    member = xp.astype(xp.expand_dims(_row_blocks(fw, y), axis=-1) == rows, acc)  # (C, row_blocks)
    return xp.matmul(xp.moveaxis(member, 0, 1), xp.astype(needed, acc)) > 0


def skipped_fill(fw: Any, g: Any, keep: Any, labels: Any, opts: Any, num_classes: int, scale: Any, cot: Any) -> Any:
    """``g`` (C, V) with every skipped block set to its gradient without the softmax
    term, ``−s·off`` per row (0 without smoothing): the filtered gradient, for the loops
    whose products run whole."""
    xp = fw.xp
    y = fw.index(labels)
    classes = xp.arange(int(g.shape[-1]), dtype=y.dtype, device=fw.device(y)) // BLOCK
    skip = ~xp.take(xp.take(keep, _row_blocks(fw, y), axis=0), classes, axis=1)
    _, off = smoothing_coefficients(opts.label_smoothing, num_classes, opts.convention)
    if is_zero(off):
        return xp.where(skip, xp.zeros_like(g), g)
    s = xp.where(_valid(fw, y, opts), xp.zeros_like(y, dtype=g.dtype) + cot * scale, 0.0)
    return xp.where(skip, xp.expand_dims(-s * off, axis=-1), g)
