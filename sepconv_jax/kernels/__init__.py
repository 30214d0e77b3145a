"""Interchangeable implementations of the same convolutions, chosen by ``impl``.

Every kernel receives arrays already flattened to one batch dim, promoted to one
dtype, and padded when ``padding_mode`` is not ``"zeros"``, together with the
resolved :class:`sepconv_jax._spec.ConvSpec`. Every kernel computes the same
function; the test suite runs one reference suite over all of them.
"""
