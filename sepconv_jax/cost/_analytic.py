"""Closed-form costs of one layer: mult-adds and parameters from its sizes.

Standard, grouped, depthwise, pointwise and separable convolutions, each as a
:class:`Cost`, and the seed's savings factor ``k^2 N / (k^2 + N)`` of a separable
over a standard convolution.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from sepconv_jax import _spec


@dataclasses.dataclass(frozen=True)
class Cost:
    """Mult-adds and parameters of one layer, one kind of layer or a whole model.

    Attributes:
      mult_adds: multiply-accumulates (biases and normalization not included).
      params: number of trainable parameters (biases included when present).
    """

    mult_adds: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.mult_adds + other.mult_adds, self.params + other.params)

    @property
    def flops(self) -> int:
        """``2 * mult_adds``: one multiply and one add each, XLA's convention."""
        return 2 * self.mult_adds


def _dims(value: Any, name: str) -> tuple[int, ...] | int:
    """An int, or a non-empty sequence of positive ints, checked."""
    if _spec.is_int(value):
        return _spec.check_positive_int(value, name)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return tuple(_spec.check_positive_int(v, name) for v in value)
    raise TypeError(
        f"`{name}` must be a positive int or a non-empty sequence of positive ints, got "
        f"{type(value).__name__} {value!r}"
    )


def _window_and_positions(
    kernel_size: Any, output_spatial: Any, num_spatial_dims: int | None
) -> tuple[int, int]:
    """(taps per window, output positions), with ints broadcast over the spatial dims."""
    window = _dims(kernel_size, "kernel_size")
    out = _dims(output_spatial, "output_spatial")
    ranks = {len(v) for v in (window, out) if isinstance(v, tuple)}
    if num_spatial_dims is not None:
        ranks.add(_spec.check_positive_int(num_spatial_dims, "num_spatial_dims"))
    if len(ranks) > 1:
        raise ValueError(
            f"`kernel_size` {window!r}, `output_spatial` {out!r} and `num_spatial_dims` "
            f"{num_spatial_dims!r} disagree on the number of spatial dims ({sorted(ranks)}); "
            f"give ints or sequences of the same length"
        )
    n = ranks.pop() if ranks else 2
    window = window if isinstance(window, tuple) else (window,) * n
    out = out if isinstance(out, tuple) else (out,) * n
    return math.prod(window), math.prod(out)


def standard_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a standard convolution: ``k^d * C * N`` mult-adds per output position.

    Args:
      kernel_size: the window, an int (the same in every spatial dim) or one per dim.
      in_channels: ``C``.
      out_channels: ``N``.
      output_spatial: the output's spatial shape, an int (the same in every dim) or
        one per dim. The default 1 gives the cost per output position.
      use_bias: count ``N`` bias parameters (biases add no mult-adds).
      num_spatial_dims: the number of spatial dims when both ``kernel_size`` and
        ``output_spatial`` are ints; default 2 (images).

    Returns:
      A :class:`Cost` with ``mult_adds = k^d * C * N * positions`` and
      ``params = k^d * C * N (+ N)``.

    Raises:
      ValueError: for non-positive sizes or disagreeing spatial ranks.
      TypeError: for non-integer sizes.

    Example:
      >>> from sepconv_jax.cost import standard_conv_cost
      >>> standard_conv_cost(3, 256, 256, output_spatial=28)
      Cost(mult_adds=462422016, params=589824)
    """
    taps, positions = _window_and_positions(kernel_size, output_spatial, num_spatial_dims)
    c = _spec.check_positive_int(in_channels, "in_channels")
    n = _spec.check_positive_int(out_channels, "out_channels")
    weights = taps * c * n
    return Cost(weights * positions, weights + (n if use_bias else 0))


def grouped_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    groups: int = 1,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a grouped convolution: ``k^d * (C / groups) * N`` mult-adds per position.

    Args:
      kernel_size, in_channels, out_channels, output_spatial, use_bias,
        num_spatial_dims: as in :func:`standard_conv_cost`.
      groups: feature groups; must divide ``in_channels`` and ``out_channels``.

    Returns:
      A :class:`Cost`; ``groups=1`` is :func:`standard_conv_cost`.

    Raises:
      ValueError: when ``groups`` does not divide the channel counts, and as
        :func:`standard_conv_cost`.
      TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import grouped_conv_cost
      >>> grouped_conv_cost(3, 64, 128, groups=4)  # 9 * 16 * 128
      Cost(mult_adds=18432, params=18432)
    """
    taps, positions = _window_and_positions(kernel_size, output_spatial, num_spatial_dims)
    c = _spec.check_positive_int(in_channels, "in_channels")
    n = _spec.check_positive_int(out_channels, "out_channels")
    g = _spec.check_positive_int(groups, "groups")
    if c % g or n % g:
        raise ValueError(f"`groups`={g} must divide both `in_channels`={c} and `out_channels`={n}")
    weights = taps * (c // g) * n
    return Cost(weights * positions, weights + (n if use_bias else 0))


def depthwise_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int | None = None,
    *,
    depth_multiplier: int | None = None,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a depthwise convolution: ``k^d * C * M`` mult-adds per output position.

    Args:
      kernel_size, in_channels, output_spatial, num_spatial_dims: as in
        :func:`standard_conv_cost`.
      out_channels: ``C * M``; may be left out when ``depth_multiplier`` is given
        (or both left out for ``M = 1``).
      depth_multiplier: ``M``, output channels per input channel.
      use_bias: count ``C * M`` bias parameters.

    Returns:
      A :class:`Cost` with ``mult_adds = k^d * C * M * positions``.

    Raises:
      ValueError: when ``out_channels`` is not ``in_channels * depth_multiplier``,
        and as :func:`standard_conv_cost`.
      TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import depthwise_conv_cost
      >>> depthwise_conv_cost(3, 256, output_spatial=28)  # 9 * 256 * 28 * 28
      Cost(mult_adds=1806336, params=2304)
    """
    taps, positions = _window_and_positions(kernel_size, output_spatial, num_spatial_dims)
    c = _spec.check_positive_int(in_channels, "in_channels")
    m = (
        None
        if depth_multiplier is None
        else _spec.check_positive_int(depth_multiplier, "depth_multiplier")
    )
    if out_channels is not None:
        n = _spec.check_positive_int(out_channels, "out_channels")
        if n % c or (m is not None and n != c * m):
            expected = f"{c} * {m} = {c * m}" if m is not None else f"a multiple of {c}"
            raise ValueError(
                f"`out_channels`={n} but a depthwise conv of `in_channels`={c} has "
                f"`in_channels * depth_multiplier` outputs: expected {expected}"
            )
        m = n // c
    m = 1 if m is None else m
    weights = taps * c * m
    return Cost(weights * positions, weights + (c * m if use_bias else 0))


def pointwise_conv_cost(
    in_channels: int,
    out_channels: int,
    *,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a pointwise (1x1) convolution: ``C * N`` mult-adds per output position.

    Args:
      in_channels, out_channels, output_spatial, use_bias, num_spatial_dims: as in
        :func:`standard_conv_cost`.

    Returns:
      A :class:`Cost` with ``mult_adds = C * N * positions``.

    Raises:
      ValueError, TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import pointwise_conv_cost
      >>> pointwise_conv_cost(256, 256, output_spatial=28, use_bias=True)
      Cost(mult_adds=51380224, params=65792)
    """
    return standard_conv_cost(
        1,
        in_channels,
        out_channels,
        output_spatial=output_spatial,
        use_bias=use_bias,
        num_spatial_dims=num_spatial_dims,
    )


def separable_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    depth_multiplier: int = 1,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    use_depthwise_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a depthwise separable convolution: ``k^d * C * M + C * M * N`` per position.

    The depthwise step (stride and padding apply there) and the pointwise step
    produce the same number of positions, ``output_spatial``.

    Args:
      kernel_size, in_channels, out_channels, output_spatial, num_spatial_dims: as in
        :func:`standard_conv_cost`.
      depth_multiplier: ``M`` of the depthwise step.
      use_bias: count the ``N`` biases of the output.
      use_depthwise_bias: count ``C * M`` biases between the steps.

    Returns:
      A :class:`Cost`, the sum of :func:`depthwise_conv_cost` and
      :func:`pointwise_conv_cost`.

    Raises:
      ValueError, TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import separable_conv_cost
      >>> separable_conv_cost(3, 256, 256, output_spatial=28)  # (9 * 256 + 256 * 256) * 784
      Cost(mult_adds=53186560, params=67840)
    """
    m = _spec.check_positive_int(depth_multiplier, "depth_multiplier")
    depthwise = depthwise_conv_cost(
        kernel_size,
        in_channels,
        depth_multiplier=m,
        output_spatial=output_spatial,
        use_bias=use_depthwise_bias,
        num_spatial_dims=num_spatial_dims,
    )
    pointwise = pointwise_conv_cost(
        _spec.check_positive_int(in_channels, "in_channels") * m,
        out_channels,
        output_spatial=output_spatial,
        use_bias=use_bias,
        num_spatial_dims=num_spatial_dims
        if num_spatial_dims is not None
        else _rank_of(kernel_size, output_spatial),
    )
    return depthwise + pointwise


def _rank_of(kernel_size: Any, output_spatial: Any) -> int | None:
    for value in (kernel_size, output_spatial):
        if isinstance(value, Sequence) and not isinstance(value, str):
            return len(value)
    return None


def savings_factor(kernel_size: int | Sequence[int], out_channels: int) -> float:
    """The seed's savings factor of a separable over a standard conv: ``k^2 N / (k^2 + N)``.

    It is the ratio of :func:`standard_conv_cost` to :func:`separable_conv_cost`
    mult-adds (depth multiplier 1), independent of the input channels and of the
    output size: ``k^2 C N / (k^2 C + C N)``. An int ``kernel_size`` means a square
    ``k x k`` window (``k^2`` taps); a sequence gives the taps as its product.

    Args:
      kernel_size: ``k``, or the window's shape.
      out_channels: ``N``.

    Returns:
      ``taps * N / (taps + N)`` as a float.

    Raises:
      ValueError, TypeError: for non-positive or non-integer sizes.

    Example:
      >>> from sepconv_jax.cost import savings_factor
      >>> round(savings_factor(3, 256), 3)  # 9 * 256 / 265
      8.694
    """
    window = _dims(kernel_size, "kernel_size")
    taps = window * window if isinstance(window, int) else math.prod(window)
    n = _spec.check_positive_int(out_channels, "out_channels")
    return taps * n / (taps + n)
