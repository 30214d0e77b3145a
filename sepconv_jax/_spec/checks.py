"""The checks every spec is made of: scalars, tuples, padding, dtypes and arrays.

Each function canonicalizes one argument or raises a ``TypeError`` / ``ValueError``
that names it; the types and constants of the accepted options live here too.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from jax import lax
from jax import numpy as jnp

PaddingLike = str | int | Sequence[int | tuple[int, int] | Sequence[int]]
#: Where the channels are: last, ``(*batch, *spatial, C)``, or first, ``(*batch, C, *spatial)``.
DataFormat = Literal["channels_last", "channels_first"]
#: How padded positions are filled (PyTorch's names).
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
#: The padding strings, upper case (any case is accepted on input).
PaddingString = Literal["SAME", "VALID", "CAUSAL"]
#: One ``(low, high)`` pair per spatial dim.
PaddingPairs = tuple[tuple[int, int], ...]

PADDING_STRINGS: tuple[PaddingString, ...] = typing.get_args(PaddingString)
PADDING_MODES: tuple[PaddingMode, ...] = typing.get_args(PaddingMode)
DATA_FORMATS: tuple[DataFormat, ...] = typing.get_args(DataFormat)
# Our names for the modes, mapped to ``numpy.pad`` / ``jax.numpy.pad`` modes.
NP_PAD_MODES: dict[PaddingMode, str] = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}

_Choice = TypeVar("_Choice", bound=str)


# ----------------------------------------------------------------------------- scalars


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools and everything else."""
    if isinstance(value, bool | np.bool_):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1 (bools rejected), or an error naming ``name``."""
    if not is_int(value):
        raise TypeError(f"`{name}` must be an int >= 1, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}")
    return value


def canonicalize_tuple(value: Any, n: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """An int or a length-``n`` sequence of ints -> a tuple of ``n`` ints >= ``minimum``."""
    if is_int(value):
        values = (operator.index(value),) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(
                f"`{name}` has {len(value)} entries {tuple(value)!r} but the kernel has {n} spatial "
                f"dim(s); pass one int for all dims or exactly {n} ints"
            )
        if not all(is_int(v) for v in value):
            raise TypeError(f"`{name}` must contain only ints, got {tuple(value)!r}")
        values = tuple(operator.index(v) for v in value)
    else:
        raise TypeError(
            f"`{name}` must be an int or a sequence of {n} ints, got {type(value).__name__} {value!r}"
        )
    bad = [v for v in values if v < minimum]
    if bad:
        raise ValueError(f"`{name}` must be >= {minimum} in every dim, got {values!r}")
    return values


def canonicalize_padding(padding: Any, n: int) -> PaddingString | PaddingPairs:
    """Normalizes every accepted padding form.

    Returns an upper-case string (``"SAME"``, ``"VALID"``, ``"CAUSAL"``) or one
    ``(low, high)`` pair per spatial dim.
    """
    if isinstance(padding, str):
        upper = padding.upper()
        if upper not in PADDING_STRINGS:
            raise ValueError(
                f"`padding` must be one of {PADDING_STRINGS} (any case), an int, or per-dim ints or "
                f"(low, high) pairs; got {padding!r}"
            )
        return upper
    pairs: list[tuple[int, int]]
    if is_int(padding):
        index = operator.index(padding)
        pairs = [(index, index)] * n
    elif isinstance(padding, Sequence):
        if len(padding) != n:
            raise ValueError(
                f"`padding` has {len(padding)} entries {tuple(padding)!r} but the kernel has {n} "
                f"spatial dim(s); give one int or one (low, high) pair per spatial dim"
            )
        pairs = []
        for entry in padding:
            if is_int(entry):
                index = operator.index(entry)
                pairs.append((index, index))
            elif (
                isinstance(entry, Sequence)
                and not isinstance(entry, str)
                and len(entry) == 2
                and all(is_int(v) for v in entry)
            ):
                pairs.append((operator.index(entry[0]), operator.index(entry[1])))
            else:
                raise TypeError(
                    f"each entry of `padding` must be an int or a (low, high) pair of ints, got {entry!r} "
                    f"in {padding!r}"
                )
    else:
        raise TypeError(
            f"`padding` must be a string, an int or a sequence, got {type(padding).__name__} "
            f"{padding!r}"
        )
    result = tuple(pairs)
    if any(v < 0 for pair in result for v in pair):
        raise ValueError(f"`padding` must be non-negative, got {result!r}")
    return result


def resolve_padding(
    padding: PaddingString | PaddingPairs,
    in_spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> PaddingPairs:
    """Turns a canonical padding into explicit ``(low, high)`` pairs for this input.

    * ``SAME``: output size ``ceil(in / stride)``; the total pad
      ``max((out - 1) * stride + eff_k - in, 0)`` is split with the odd element at the
      end (TensorFlow / ``lax`` semantics).
    * ``VALID``: no padding.
    * ``CAUSAL``: ``eff_k - 1`` before, nothing after, so output ``t`` sees inputs
      ``<= t * stride`` only.
    """
    if not isinstance(padding, str):
        return padding
    pairs: list[tuple[int, int]] = []
    for size, k, s, d in zip(in_spatial, window, strides, dilation, strict=True):
        eff = (k - 1) * d + 1
        if padding == "VALID":
            pairs.append((0, 0))
        elif padding == "CAUSAL":
            pairs.append((eff - 1, 0))
        else:  # SAME
            out = -(-size // s)
            total = max((out - 1) * s + eff - size, 0)
            pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def check_choice(value: Any, choices: Sequence[_Choice], name: str) -> _Choice:
    """Checks that ``value`` is one of the string ``choices``, and returns it."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, one of {tuple(choices)}, got {value!r}")
    for choice in choices:
        if value == choice:
            return choice
    raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


def check_precision(precision: Any) -> None:
    """``None``, a :class:`jax.lax.Precision`, one of its names, or a pair of them."""
    if precision is None:
        return
    values = precision if isinstance(precision, tuple | list) else (precision,)
    if len(values) not in (1, 2):
        raise ValueError(f"`precision` must be one value or a pair, got {precision!r}")
    for value in values:
        if isinstance(value, lax.Precision):
            continue
        try:
            lax.Precision(value)
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"`precision` must be None, a `jax.lax.Precision` or one of 'default', 'high', "
                f"'highest', got {precision!r}"
            ) from None


def check_preferred_element_type(preferred_element_type: Any) -> np.dtype | None:
    """``None`` or a floating or complex dtype, as a NumPy dtype."""
    if preferred_element_type is None:
        return None
    try:
        dtype = np.dtype(preferred_element_type)
    except TypeError:
        raise TypeError(
            f"`preferred_element_type` must be None or a dtype such as jnp.float32, got "
            f"{preferred_element_type!r}"
        ) from None
    if not np.issubdtype(dtype, np.inexact):
        raise TypeError(
            f"`preferred_element_type` must be a floating or complex dtype, got {dtype}"
        )
    return dtype


def check_num_spatial_dims(num_spatial_dims: Any) -> int | None:
    """``None``, or how many trailing dims of a channels-first input are spatial (>= 0)."""
    if num_spatial_dims is None:
        return None
    return canonicalize_tuple(num_spatial_dims, 1, "num_spatial_dims", minimum=0)[0]


# ----------------------------------------------------------------------------- arrays


def check_numeric(value: Any, name: str) -> np.dtype:
    """Returns the dtype of an array-like, raising ``TypeError`` unless it is numeric."""
    if value is None:
        raise TypeError(f"`{name}` must be an array, got None")
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(value).dtype
        except Exception as e:  # ragged lists and other junk
            raise TypeError(f"`{name}` could not be read as an array: {e}") from None
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or not jnp.issubdtype(dtype, jnp.number):
        raise TypeError(
            f"`{name}` must have a numeric dtype (integer, floating or complex), got {dtype}; "
            f"cast it with `.astype(jnp.float32)`"
        )
    return dtype


def shape_of(value: Any) -> tuple[int, ...]:
    """Static shape of an array-like (works on tracers, NumPy arrays and lists)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    return tuple(shape)


def check_bias(bias: Any, channels: int, name: str) -> None:
    """A bias must be a 1-D numeric array with one entry per output channel."""
    if bias is None:
        return
    check_numeric(bias, name)
    shape = shape_of(bias)
    if shape != (channels,):
        raise ValueError(
            f"`{name}` has shape {shape} but the output has {channels} channels; "
            f"expected shape ({channels},)"
        )
