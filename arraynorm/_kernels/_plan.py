"""How the NumPy fast path cuts a partition's layout into cache-sized blocks.

The input is seen as ``(M, *fine)``: the leading axes whose statistics are independent merged
into M rows, the other axes merged where neighbours agree on being reduced and on carrying
γ/β. Size-one axes are dropped. Two geometries follow:

* **rows**: the elements of one statistic fit in a block (LN, RMS, IN, GN, PN, small BN);
  a block is a few whole rows and its statistics are final;
* **chunks**: they do not (BN over N·H·W); a block is a chunk of ``fine[0]`` (a reduced axis)
  or, when one index of it is still too large, of ``fine[1]``; chunk statistics are merged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from ..partition import Layout

__all__ = ["Plan", "plan"]


_MAX_STRIDED_RUN = 8192


def _balanced(n: int, most: int) -> int:
    """The chunk length that cuts ``n`` into as few, and as equal, chunks of at most ``most``."""
    k = -(-n // max(1, most))
    return -(-n // k)


@dataclass(frozen=True)
class Plan:
    rows: int                    # M: leading axes along which statistics are independent
    lead: tuple[int, ...]        # those axes, merged where γ/β allow
    lead_par: tuple[bool, ...]   # whether γ/β vary along each of them
    fine: tuple[int, ...]        # the other axes, one per run of (reduced, carries γ/β)
    red: tuple[bool, ...]        # which of them are reduced
    pfine: tuple[int, ...]       # γ/β broadcast shape over `fine`
    n: int                       # elements per statistic
    rows_per_block: int          # > 0: blocks of whole rows; 0: chunks, two passes
    chunk0: int                  # chunk length along fine[0] (a reduced axis)
    chunk1: int                  # > 0: chunk length along fine[1] (chunk0 is then 1)

    @property
    def sfine(self) -> tuple[int, ...]:
        """Statistics' shape over `fine` (reduced axes kept as 1)."""
        return tuple(1 if r else d for d, r in zip(self.fine, self.red))

    @property
    def rflags(self) -> tuple[bool, ...]:
        """Block axes (rows first) that statistics sum over."""
        return (False,) + self.red

    @property
    def pflags(self) -> tuple[bool, ...]:
        """Block axes that γ/β cotangents sum over (where γ does not vary)."""
        return (not any(self.lead_par),) + tuple(q == 1 for q in self.pfine)

    @property
    def fold(self) -> bool:
        """γ is constant over each statistic's elements (BN, IN, no γ): rstd·γ is one small
        array per statistic and the backward needs no γ·dy array."""
        return all(p == 1 for p, r in zip(self.pfine, self.red) if r)

    @property
    def split1(self) -> bool:
        """Chunks cut ``fine[1]`` too (one index of ``fine[0]`` per chunk)."""
        return self.chunk1 > 0

    @property
    def n_chunks(self) -> tuple[int, int]:
        n1 = -(-self.fine[1] // self.chunk1) if self.split1 else 1
        return -(-self.fine[0] // self.chunk0), n1

    @property
    def n_partials(self) -> int:
        """Partial statistics per row: chunks of a kept ``fine[1]`` hold different statistics."""
        n0, n1 = self.n_chunks
        return n0 if self.split1 and not self.red[1] else n0 * n1

    @property
    def block_elems(self) -> int:
        """Elements of the largest block (scratch size)."""
        if self.rows_per_block:
            return self.rows_per_block * math.prod(self.fine)
        if self.split1:
            return self.chunk1 * math.prod(self.fine[2:])
        return self.chunk0 * math.prod(self.fine[1:])

    @property
    def n_blocks(self) -> int:
        if self.rows_per_block:
            return -(-self.rows // self.rows_per_block)
        n0, n1 = self.n_chunks
        return self.rows * n0 * n1

    def block(self, i: int) -> tuple[tuple[slice, ...], int]:
        """Block ``i``'s slice of the (M, *fine) view and its index among partial statistics."""
        if self.rows_per_block:
            r0 = i * self.rows_per_block
            return (slice(r0, min(self.rows, r0 + self.rows_per_block)),), 0
        n0, n1 = self.n_chunks
        m, j = divmod(i, n0 * n1)
        j0, j1 = divmod(j, n1)
        sl: tuple[slice, ...] = (slice(m, m + 1),
                                 slice(j0 * self.chunk0, min(self.fine[0], (j0 + 1) * self.chunk0)))
        if self.split1:
            sl += (slice(j1 * self.chunk1, min(self.fine[1], (j1 + 1) * self.chunk1)),)
            if not self.red[1]:
                j = j0
        return sl, j


def _origin(layout: Layout) -> list[int]:
    """The input axis each view axis comes from (a partition splits at most one axis in two)."""
    shape, view = layout.shape, layout.view_shape
    if len(view) == len(shape):
        return list(range(len(view)))
    k = next((i for i in range(len(shape)) if view[i] != shape[i]), len(shape) - 1)
    return [i if i <= k else i - 1 for i in range(len(view))]


@functools.lru_cache(maxsize=256)
def plan(layout: Layout, with_params: bool, block: int) -> Plan | None:
    """The block plan of a layout (``block``: target elements per block), or ``None`` when no
    reduced axis is longer than one (the portable path handles that degenerate case)."""
    origin = _origin(layout)
    axes = [(d, i in layout.reduce_axes, with_params and origin[i] in layout.param_axes)
            for i, d in enumerate(layout.view_shape) if d != 1]
    merged: list[list[Any]] = []
    for d, r, p in axes:
        if merged and (merged[-1][1], merged[-1][2]) == (r, p):
            merged[-1][0] *= d
        else:
            merged.append([d, r, p])
    k = next((i for i, (_, r, _) in enumerate(merged) if r), None)
    if k is None:
        return None
    lead, rest = merged[:k], merged[k:]
    fine = tuple(d for d, _, _ in rest)
    rows = math.prod(d for d, _, _ in lead)
    row = math.prod(fine)
    rows_per_block = chunk0 = chunk1 = 0
    if row <= block:
        rows_per_block = _balanced(rows, block // row)
    elif math.prod(fine[1:]) <= block:
        # a chunk sums fine[0] values along a strided axis in float32, one after another
        # (NumPy/BLAS, not pairwise); capping the run keeps that error ~1e-7 relative, and
        # the chunks' partial moments are merged exactly in float64
        chunk0 = _balanced(fine[0], min(block // math.prod(fine[1:]), _MAX_STRIDED_RUN))
    else:
        chunk0, chunk1 = 1, _balanced(fine[1], block // math.prod(fine[2:]))
    return Plan(rows, tuple(d for d, _, _ in lead), tuple(p for _, _, p in lead), fine,
                tuple(r for _, r, _ in rest), tuple(d if p else 1 for d, _, p in rest),
                layout.group_size, rows_per_block, chunk0, chunk1)
