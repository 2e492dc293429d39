"""AWQ over a whole model, one decoder layer at a time in the sequential calibration pass: the inputs of each scale
group are captured once (a row sample), then for each group in order (q/k/v, v->o where shapes allow, gate/up,
up->down) the scale is searched, folded into the model (which computes the same function after it), the group's
cached inputs divided by it, and (optionally) each weight's clip searched; then every linear is rounded to
nearest on intk's grid.

The search compares the group's linear outputs, not AutoAWQ's whole attention / MLP block (its module2inspect):
the block would need the layer's attention mask and position embeddings re-threaded through every grid point.
"""

from __future__ import annotations

import torch

from quantizers.awq.fold import fold_scale, layer_groups
from quantizers.awq.solver import apply_clip, search_clip, search_scale
from quantizers.calibration import CalibratedLayer, input_hooks, output_error, sequential_pass, swap_in
from quantizers.gptq.solver import HessianAccumulator
from quantizers.intk import IntKConfig

NO_CLIP = ("q_proj", "k_proj")  # AWQ's choice: their outputs meet in q k^T, which a per-output clip ignores


def calibrate(config, model, names, batches, progress=None) -> dict[str, CalibratedLayer]:
    rtn = IntKConfig(bits=config.bits, group_size=config.group_size).build()
    result: dict[str, CalibratedLayer] = {}

    def step(index, layer, linears, run):
        prefix = _prefix(layer, linears)
        groups = layer_groups(layer)
        rows: dict[str, list[torch.Tensor]] = {}
        hessians: dict[str, HessianAccumulator] = {}
        per_batch = max(1, config.max_rows // len(batches))

        def consume(owner: str, x: torch.Tensor) -> None:
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            rows.setdefault(owner, []).append(flat[:: max(1, flat.shape[0] // per_batch)][:per_batch])
            hessians.setdefault(owner, HessianAccumulator(x.shape[-1], torch.float32)).add(flat)

        owners, remove = input_hooks(linears, consume, layer)
        try:
            run()
        finally:
            remove()
        inputs = {owner: torch.cat(r) for owner, r in rows.items()}
        hessian = {owner: acc.hessian for owner, acc in hessians.items()}
        # round-to-nearest's error is measured on the weights and inputs as they were before any scale was folded
        rtn_error = {name: output_error(lin.weight, rtn.quantize(lin.weight.detach()).dequantize(torch.float32),
                                        hessian[owners[name]]) for name, lin in linears.items()}
        for group in groups:
            full = [prefix + n for n in group.names]
            if not all(n in linears for n in full):
                continue  # a group partly outside the quantization's targets keeps its weights as they are
            owner = owners[full[0]]
            found = search_scale(inputs[owner], [lin.weight.detach() for lin in group.linears], rtn, config.grid,
                                 max_rows=None)
            fold_scale(group.prev, group.linears, found.scales.to(group.linears[0].weight.dtype))
            inputs[owner] = inputs[owner] / found.scales  # what the linears read from now on
            hessian[owner] = hessian[owner] / torch.outer(found.scales, found.scales).to(hessian[owner].dtype)
        quantized = {}
        for name, linear in linears.items():
            w = linear.weight.detach()
            x = inputs[owners[name]]
            if config.clip and not name.endswith(NO_CLIP):
                w = apply_clip(w, search_clip(w, x, rtn, config.group_size))
            qt = rtn.quantize(w, name=f"{name}.weight")
            quantized[name] = qt.dequantize(torch.float32)
            result[name] = CalibratedLayer(qt, output_error(linear.weight, quantized[name], hessian[owners[name]]),
                                           rtn_error[name])
        return swap_in(linears, quantized)

    sequential_pass(model, batches, names, step, progress)
    return result


def _prefix(layer, linears) -> str:
    """The decoder layer's own name in the model plus a dot, read off one of its linears' full names."""
    name, linear = next(iter(linears.items()))
    inner = next(n for n, m in layer.named_modules() if m is linear)
    return name[: len(name) - len(inner)]
