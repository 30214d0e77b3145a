"""ONNX lowering of :data:`~sepconv_jax.export.quantization.fake_quant_p` for ``jax2onnx``.

One fake quantization becomes ``QuantizeLinear`` then ``DequantizeLinear`` with the
same scale and int8 zero point (``axis`` set for per-channel scales): the QDQ form
that onnxruntime fuses into integer kernels (``QLinearConv``, ``QLinearMatMul``...)
where a ``DequantizeLinear -> op -> QuantizeLinear`` pattern allows it.
"""

from __future__ import annotations

from typing import Any

from sepconv_jax.export.quantization import fake_quant_p

_REGISTERED = False


def register() -> None:
    """Registers the lowering with ``jax2onnx`` (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    @register_primitive(
        jaxpr_primitive=fake_quant_p.name,
        jax_doc="sepconv_jax.export.quantization.fake_quant",
        onnx=[{"component": "QuantizeLinear"}, {"component": "DequantizeLinear"}],
        since="0.1.0",
        context="primitives.sepconv_jax",
        component="fake_quant",
        testcases=[],
    )
    class FakeQuantPlugin(PrimitiveLeafPlugin):
        def lower(self, ctx: Any, eqn: Any) -> None:
            x_var, scale_var, zero_var = eqn.invars
            out_var = eqn.outvars[0]
            x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name("fq_in"))
            scale = ctx.get_value_for_var(scale_var, name_hint=ctx.fresh_name("fq_scale"))
            zero = ctx.get_value_for_var(zero_var, name_hint=ctx.fresh_name("fq_zero_point"))
            out_spec = ctx.get_value_for_var(out_var, name_hint=ctx.fresh_name("fq_out"))
            axis = eqn.params["axis"]
            attrs = {} if axis is None else {"axis": int(axis)}
            q = ctx.builder.QuantizeLinear(
                x, scale, zero, _outputs=[ctx.fresh_name("fq_int8")], **attrs
            )
            name = out_spec.name
            if getattr(out_spec, "producer", None) is not None:
                name = ctx.fresh_name("fq_out")
            y = ctx.builder.DequantizeLinear(q, scale, zero, _outputs=[name], **attrs)
            y.type = out_spec.type
            y.shape = out_spec.shape
            ctx.bind_value_for_var(out_var, y)

    _REGISTERED = True
