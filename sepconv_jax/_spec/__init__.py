"""Argument canonicalization and validation: one place, one frozen record out.

Every public function in :mod:`sepconv_jax.ops` calls into this package before it
touches ``lax``, and so do the modules of :mod:`sepconv_jax.linen` and
:mod:`sepconv_jax.nnx` for their options and input channels. Shapes are static under
``jax.jit``, so every check here runs at trace time and a bad argument never
reaches XLA.

Records out: :class:`ConvSpec` (a windowed convolution, resolved against its input),
:class:`PointwiseSpec` (a 1x1 convolution), :class:`WindowOptions` (a module's
window options, canonical but not yet bound to an input) and :class:`StreamSpec`
(one step of a causal stream). Everything is imported from here; the submodules
hold one topic each: ``checks`` (scalars, tuples, padding, dtypes, arrays),
``conv`` (:class:`ConvSpec`, :class:`PointwiseSpec`), ``window`` (module options)
and ``stream`` (streaming steps).
"""

from sepconv_jax._spec.checks import DATA_FORMATS as DATA_FORMATS
from sepconv_jax._spec.checks import NP_PAD_MODES as NP_PAD_MODES
from sepconv_jax._spec.checks import PADDING_MODES as PADDING_MODES
from sepconv_jax._spec.checks import PADDING_STRINGS as PADDING_STRINGS
from sepconv_jax._spec.checks import DataFormat as DataFormat
from sepconv_jax._spec.checks import PaddingLike as PaddingLike
from sepconv_jax._spec.checks import PaddingMode as PaddingMode
from sepconv_jax._spec.checks import PaddingPairs as PaddingPairs
from sepconv_jax._spec.checks import PaddingString as PaddingString
from sepconv_jax._spec.checks import canonicalize_padding as canonicalize_padding
from sepconv_jax._spec.checks import canonicalize_tuple as canonicalize_tuple
from sepconv_jax._spec.checks import check_bias as check_bias
from sepconv_jax._spec.checks import check_choice as check_choice
from sepconv_jax._spec.checks import check_num_spatial_dims as check_num_spatial_dims
from sepconv_jax._spec.checks import check_numeric as check_numeric
from sepconv_jax._spec.checks import check_positive_int as check_positive_int
from sepconv_jax._spec.checks import check_precision as check_precision
from sepconv_jax._spec.checks import (
    check_preferred_element_type as check_preferred_element_type,
)
from sepconv_jax._spec.checks import is_int as is_int
from sepconv_jax._spec.checks import resolve_padding as resolve_padding
from sepconv_jax._spec.checks import shape_of as shape_of
from sepconv_jax._spec.conv import ConvSpec as ConvSpec
from sepconv_jax._spec.conv import PointwiseSpec as PointwiseSpec
from sepconv_jax._spec.conv import make_spec as make_spec
from sepconv_jax._spec.conv import pointwise_after as pointwise_after
from sepconv_jax._spec.conv import pointwise_channels as pointwise_channels
from sepconv_jax._spec.conv import pointwise_spec as pointwise_spec
from sepconv_jax._spec.stream import StreamSpec as StreamSpec
from sepconv_jax._spec.stream import stream_conv as stream_conv
from sepconv_jax._spec.stream import stream_dtype as stream_dtype
from sepconv_jax._spec.stream import stream_spec as stream_spec
from sepconv_jax._spec.stream import stream_window as stream_window
from sepconv_jax._spec.window import WindowOptions as WindowOptions
from sepconv_jax._spec.window import check_kernel_size as check_kernel_size
from sepconv_jax._spec.window import window_channels as window_channels
from sepconv_jax._spec.window import window_options as window_options
