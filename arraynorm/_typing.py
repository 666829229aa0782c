"""The type aliases every module of the package annotates with.

An array of any array-API library (NumPy, CuPy, PyTorch, JAX, Dask, array-api-strict) has no
common static type: the standard describes a protocol, not a class, and the libraries'
own stubs disagree on it. So ``Array`` is ``Any`` — the checker then verifies everything
around the arrays (shapes as tuples of ints, dtypes passed where dtypes belong, the
implementation protocol, optional values) — and the aliases say in every signature what
an argument is. One module, so that a stricter ``Array`` protocol, once the ecosystem has
one, changes one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

__all__ = ["Array", "Namespace", "Dtype", "Device", "Shape", "Pullback", "Pushforward"]

#: an array of any array-API library
Array: TypeAlias = Any
#: an array-API namespace (``array_api_compat.array_namespace(x)``), the ``xp`` of every op
Namespace: TypeAlias = Any
#: a dtype of some namespace (``xp.float32``)
Dtype: TypeAlias = Any
#: a device of some namespace (``array_api_compat.device(x)``)
Device: TypeAlias = Any
#: an array shape
Shape: TypeAlias = tuple[int, ...]
#: a VJP rule's pullback (:func:`arraynorm.defvjp`): the output's cotangent(s) -> one cotangent
#: per positional parameter
Pullback: TypeAlias = Callable[[Any], tuple[Any, ...]]
#: a JVP rule's pushforward (:func:`arraynorm.defjvp`): one tangent per positional argument ->
#: the output's tangent
Pushforward: TypeAlias = Callable[..., Any]
