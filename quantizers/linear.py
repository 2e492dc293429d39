"""QuantLinear: a frozen linear layer over a QuantizedTensor, dequantizing on the fly.

Only the packed codes and constants are stored. Each forward dequantizes the weight into the compute dtype
(fp32/bf16/fp16), multiplies, and drops it; backward dequantizes again instead of keeping the full-precision
copy alive between forward and backward (that copy is what 4-bit training exists to avoid). The weight gets
no gradient; the input does, so adapters stacked on top of it can train.
"""

from __future__ import annotations

import torch
from torch import nn

from quantizers.base import COMPUTE_DTYPES, QuantizedTensor, Quantizer


class _DequantizedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return x @ layer.dequantized_weight().t()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = grad_out @ ctx.layer.dequantized_weight() if ctx.needs_input_grad[0] else None
        return grad_x, None


class QuantLinear(nn.Module):
    """y = x W^T + b with W stored quantized. x: (..., in_features) -> (..., out_features), in x's dtype.

    Dtype casts of the module (.to(dtype), .half()) leave it as it is; device moves apply.
    """

    def __init__(self, qweight: QuantizedTensor, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if len(qweight.shape) != 2:
            raise ValueError(f"QuantLinear needs a 2-D weight, got shape {tuple(qweight.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.compute_dtype = compute_dtype
        # The tensors live as buffers so that .to(), state_dict() and memory accounting see them;
        # the QuantizedTensor itself is rebuilt from them on use.
        self._layout = qweight
        self._buffer_names = {}
        for key, tensor in qweight.tensors().items():
            buffer = "qweight_" + key.replace(".", "_")
            self._buffer_names[key] = buffer
            self.register_buffer(buffer, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().to(compute_dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantizer: Quantizer, name: str = "linear") -> QuantLinear:
        qweight = quantizer.quantize(linear.weight.detach(), name=f"{name}.weight")
        return cls(qweight, linear.bias, COMPUTE_DTYPES[quantizer.config.compute_dtype])

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() must not recast the stored format: fp32 absmax in fp16 loses range, and
        # bitsandbytes' kernels read the codes and absmax as fp32 (a bf16 copy decodes to garbage). The
        # compute dtype is a config choice, so it stays too; device moves go through.
        def move_only(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            return moved if moved.dtype == t.dtype else t.to(moved.device)

        return super()._apply(move_only, recurse)

    @property
    def qweight(self) -> QuantizedTensor:
        return self._layout.with_tensors({k: getattr(self, b) for k, b in self._buffer_names.items()})

    def dequantized_weight(self) -> torch.Tensor:
        """(out_features, in_features) in the compute dtype."""
        return self.qweight.dequantize(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _DequantizedMatmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        q = self._layout
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={q.format}, "
                f"bits_per_param={q.bits_per_param:.3f}, compute_dtype={self.compute_dtype}")
