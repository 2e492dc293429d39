"""GPTQ over a whole model: one Hessian per distinct linear input, collected in the sequential calibration pass,
then every linear of the decoder layer quantized against it.

The layer's outputs for the next layer are computed with the quantized weights in place (the calibrated model the
next layer will see); the full-precision weights come back afterwards, because quantize_model builds the quantized
layers from the codes returned here and measures their weight error against the original weights.
"""

from __future__ import annotations

import torch

from quantizers.calibration import CalibratedLayer, input_hooks, output_error, sequential_pass, swap_in
from quantizers.gptq.solver import HESSIAN_DTYPES, HessianAccumulator
from quantizers.intk import IntKConfig


def calibrate(config, model, names, batches, progress=None) -> dict[str, CalibratedLayer]:
    quantizer = config.build()
    rtn = IntKConfig(bits=config.bits, group_size=config.group_size).build() if not config.sym else quantizer
    dtype = HESSIAN_DTYPES[config.hessian_dtype]
    result: dict[str, CalibratedLayer] = {}

    def step(index, layer, linears, run):
        hessians: dict[str, HessianAccumulator] = {}

        def consume(owner: str, x: torch.Tensor) -> None:
            if owner not in hessians:
                hessians[owner] = HessianAccumulator(x.shape[-1], dtype)
            hessians[owner].add(x)

        owners, remove = input_hooks(linears, consume, layer)
        try:
            run()
        finally:
            remove()
        quantized = {}
        for name, linear in linears.items():
            H = hessians[owners[name]].hessian
            w = linear.weight.detach()
            qt = quantizer.quantize_with_hessian(w, H, name=f"{name}.weight")
            quantized[name] = qt.dequantize(torch.float32)
            result[name] = CalibratedLayer(qt, output_error(w, quantized[name], H),
                                           output_error(w, rtn.quantize(w, name).dequantize(torch.float32), H))
        return swap_in(linears, quantized)

    sequential_pass(model, batches, names, step, progress)
    return result
