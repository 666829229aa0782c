"""Stage 1 of the survey's framework: area partitioning — over which elements statistics are taken.

A partition maps the input's shape to a :class:`Layout`: a free reshape of the input
(``view_shape``, only ever splitting one axis in two), the axes of that view statistics are
reduced over, the view axis that a whitening operation decorrelates (``feature_axis``), and
the axes of the *original* input that per-feature affine parameters span (``param_axes``).
Everything that is not reduced keeps its own statistics. As in Flax, LN, IN, GN and PN are
then one mechanism with different reduction axes (Huang et al., arXiv 2009.12836, §3.1).

=============  ==========================  =================================  ==============
partition      view of (N, C, *S)          reduced over                       feature axis
=============  ==========================  =================================  ==============
Batch          (N, C, *S)                  N, *S                              C
Layer(axes)    unchanged                   the given axes                     —
Instance       (N, C, *S)                  *S                                 C
Group(G)       (N, G, C/G, *S)             C/G, *S                            G
Position       (N, C, *S)                  C                                  —
GhostBatch(k)  (N/k, k, C, *S)             k, *S                              C
BatchGroups    (N, G, C/G, *S)             N, *S                              C/G
=============  ==========================  =================================  ==============

The channel axis is configurable (``axis``, default 1 = NCHW); the batch axis is always 0.
Partitions only look at shapes, never at values.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from ._array_api import xp_check_channel_axis, xp_check_int, xp_normalize_axes

__all__ = ["Layout", "layout_of", "Partition", "Batch", "Layer", "Instance", "Group", "Position",
           "GhostBatch", "BatchGroups"]


@dataclass(frozen=True)
class Layout:
    """How one input shape is partitioned.

    Attributes
    ----------
    shape : the original input shape.
    view_shape : shape the input is reshaped to (a split of one axis at most, so no copy).
    reduce_axes : axes of the view that statistics are taken over.
    feature_axis : axis of the view whose entries a whitening operation decorrelates, or
        ``None`` when the partition has no such axis (whitening then refuses it).
    param_axes : axes of the original input that per-feature γ/β span.
    per : for partitions whose statistics come from the batch (BN, IN, ghost BN), what one
        statistic is "per" in the error raised when it would be computed from a single value
        (PyTorch's training-mode rule); ``None`` where one value is allowed (LN, GN, PN).
    """

    shape: tuple[int, ...]
    view_shape: tuple[int, ...]
    reduce_axes: tuple[int, ...]
    feature_axis: int | None
    param_axes: tuple[int, ...]
    per: str | None = None

    def check_many(self, fname: str) -> None:
        """Raise when a batch statistic would come from one value (var = 0, a caller's bug).

        No values at all (an empty batch or spatial size 0) is allowed, as in PyTorch: the
        input then has no elements and the output is empty too."""
        if self.per is not None and self.group_size == 1:
            raise ValueError(
                f"{fname}: expected more than 1 value per {self.per} when computing batch "
                f"statistics, got input of shape {self.shape}"
            )

    @functools.cached_property
    def group_size(self) -> int:
        """Number of elements each statistic is computed from."""
        return math.prod(self.view_shape[a] for a in self.reduce_axes)

    @functools.cached_property
    def param_shape(self) -> tuple[int, ...]:
        """Shape of per-feature γ/β: the input's sizes along :attr:`param_axes`."""
        return tuple(self.shape[a] for a in self.param_axes)

    @functools.cached_property
    def stats_shape(self) -> tuple[int, ...]:
        """Shape of a statistic in view space (kept dims of size one)."""
        return tuple(1 if a in self.reduce_axes else n for a, n in enumerate(self.view_shape))


#: layouts by (partition, shape): a model's layers ask for the same few on every call (a
#: layout costs ~3 µs to build and check, a lookup 0.2 µs); only successes are kept
_LAYOUTS: dict[tuple[Any, tuple[int, ...]], Layout] = {}


def exact_fields(partition: Any) -> bool:
    """Whether every field of ``partition`` is an int (not a bool), None or a tuple of ints:
    then partitions equal by value are the same partition, and what was checked for one holds
    for the other. ``Layer(True) == Layer(1)`` and ``GhostBatch(2.0) == GhostBatch(2)``, but
    only the second of each passes the checks, so caches keyed by equality take only these."""
    try:
        fields = vars(partition).values()
    except TypeError:  # slots: a user's partition, asked every time
        return False
    for v in fields:
        if not (type(v) is int or v is None
                or (type(v) is tuple and all(type(a) is int for a in v))):
            return False
    return True


def layout_of(partition: Partition, fname: str, shape: tuple[int, ...]) -> Layout:
    """``partition.layout(fname, shape)``, remembered per (partition, shape): partitions look
    only at shapes (module docstring), so equal partitions give equal layouts. Partitions
    whose fields are not plain ints (:func:`exact_fields`) are asked every time."""
    if not exact_fields(partition):
        return partition.layout(fname, shape)
    key = (partition, shape)
    try:
        got = _LAYOUTS.get(key)
    except TypeError:  # a user's partition that is not hashable
        return partition.layout(fname, shape)
    if got is None:
        got = partition.layout(fname, shape)
        if len(_LAYOUTS) >= 1024:
            _LAYOUTS.clear()
        _LAYOUTS[key] = got
    return got


class Partition:
    """Base class: subclasses implement :meth:`layout`."""

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:  # pragma: no cover
        """The :class:`Layout` of an input of ``shape``: view, reduced axes, feature axis and
        parameter axes; ``ValueError`` naming ``fname`` when the shape does not fit the partition.
        """
        raise NotImplementedError

    @staticmethod
    def _require_rank(fname: str, shape: tuple[int, ...], rank: int, what: str) -> None:
        if len(shape) < rank:
            raise ValueError(
                f"{fname}: x must have at least {rank} dimensions ({what}), got shape {tuple(shape)}"
            )





@dataclass(frozen=True)
class Batch(Partition):
    """Batch partition (BN): one statistic per channel over the batch and spatial axes."""

    axis: int = 1

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:
        self._require_rank(fname, shape, 2, "batch and channel")
        ax = xp_check_channel_axis(fname, self.axis, len(shape))
        reduce = tuple(a for a in range(len(shape)) if a != ax)
        return Layout(tuple(shape), tuple(shape), reduce, ax, (ax,), per="channel")


@dataclass(frozen=True)
class Layer(Partition):
    """Layer partition (LN): one statistic per sample over ``axes`` (default the last axis)."""

    axes: int | tuple[int, ...] = -1

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:
        self._require_rank(fname, shape, 1, "the normalized axes")
        axes = xp_normalize_axes(fname, self.axes, len(shape))
        return Layout(tuple(shape), tuple(shape), axes, None, axes)


@dataclass(frozen=True)
class Instance(Partition):
    """Instance partition (IN): one statistic per sample and channel over the spatial axes."""

    axis: int = 1

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:
        self._require_rank(fname, shape, 3, "batch, channel and at least one spatial axis")
        ax = xp_check_channel_axis(fname, self.axis, len(shape))
        reduce = tuple(a for a in range(1, len(shape)) if a != ax)
        return Layout(tuple(shape), tuple(shape), reduce, ax, (ax,),
                      per="instance and channel (spatial size 1)")


@dataclass(frozen=True)
class Group(Partition):
    """Group partition (GN): channels split into ``num_groups`` groups, one statistic per
    sample and group over the group's channels and the spatial axes."""

    num_groups: int
    axis: int = 1

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:
        self._require_rank(fname, shape, 2, "batch and channel")
        ax = xp_check_channel_axis(fname, self.axis, len(shape))
        g = xp_check_int(fname, "num_groups", self.num_groups)
        c = shape[ax]
        if c % g:
            raise ValueError(
                f"{fname}: num_groups={g} must divide the number of channels, got {c} channels"
            )
        view = tuple(shape[:ax]) + (g, c // g) + tuple(shape[ax + 1:])
        reduce = tuple(a for a in range(1, len(view)) if a != ax)
        return Layout(tuple(shape), view, reduce, ax, (ax,))


@dataclass(frozen=True)
class Position(Partition):
    """Positional partition (PN, Li et al. 2019): one statistic per sample and position,
    over the channels."""

    axis: int = 1

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:
        self._require_rank(fname, shape, 2, "batch and channel")
        ax = xp_check_channel_axis(fname, self.axis, len(shape))
        return Layout(tuple(shape), tuple(shape), (ax,), None, (ax,))


@dataclass(frozen=True)
class GhostBatch(Partition):
    """Ghost (virtual) batch partition (Hoffer et al. 2017): the batch is split into
    consecutive virtual batches of ``virtual_batch_size`` samples, each normalized like BN.

    Unlike some implementations that let the last chunk be smaller, the batch size must be a
    multiple of ``virtual_batch_size`` (as Keras' ``virtual_batch_size``): a short last chunk
    would be normalized with noisier statistics than the rest, silently.
    """

    virtual_batch_size: int
    axis: int = 1

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:
        self._require_rank(fname, shape, 2, "batch and channel")
        ax = xp_check_channel_axis(fname, self.axis, len(shape))
        k = xp_check_int(fname, "virtual_batch_size", self.virtual_batch_size)
        n = shape[0]
        if n % k:
            raise ValueError(
                f"{fname}: virtual_batch_size={k} must divide the batch size, got batch {n}"
            )
        view = (n // k, k) + tuple(shape[1:])
        vax = ax + 1
        reduce = tuple(a for a in range(1, len(view)) if a != vax)
        return Layout(tuple(shape), view, reduce, vax, (ax,), per="channel in a virtual batch")


@dataclass(frozen=True)
class BatchGroups(Partition):
    """Batch partition over channel groups (decorrelated BN's ``num_groups``, Huang et al.
    2018): the C channels are split into ``num_groups`` consecutive groups of C/num_groups;
    statistics over the batch and spatial axes, with the *within-group channel* axis as the
    feature axis, so a whitening operation decorrelates the channels of each group and the
    groups are whitened independently (one C/G × C/G matrix per group).

    View of (N, C, *S): (N, G, C/G, *S), reduced over N and *S, feature axis C/G, the group
    axis kept. With a standardizing operation it is plain BN (every channel on its own);
    ``num_groups=1`` whitens all channels together, ``num_groups=C`` is BN again.
    """

    num_groups: int
    axis: int = 1

    def layout(self, fname: str, shape: tuple[int, ...]) -> Layout:
        # GroupNorm's split of the channels (and its checks); only the roles of the axes differ
        grouped = Group(self.num_groups, self.axis).layout(fname, shape)
        ax = grouped.feature_axis  # the group axis; the channels within a group follow it
        assert ax is not None  # a Group layout always has one
        reduce = tuple(a for a in range(len(grouped.view_shape)) if a not in (ax, ax + 1))
        return Layout(grouped.shape, grouped.view_shape, reduce, ax + 1, grouped.param_axes,
                      per="channel")
