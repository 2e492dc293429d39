"""gptq: GPTQ (Frantar et al. 2022, "Accurate Post-Training Quantization for Generative Pre-trained Transformers").

GPTQ quantizes a linear layer's weight column by column and, after each column, moves the rounding error
onto the columns not yet quantized, weighted by the inverse Hessian of the layer's squared output error
on calibration inputs (H = 2 X^T X / n). Its output is intk's storage format exactly (codes in
[0, 2^k - 1], one fp16 scale and one zero point per `group_size` input features of each row), so every
path that reads intk (QuantLinear, the adapters, QA-LoRA's merge into zero points) reads GPTQ unchanged.

So far this package holds only the algorithm, as a pure tensor function (quantizers.gptq.solver:
HessianAccumulator, gptq_solve, gptq_quantize). Nothing is registered in harness.registry yet: the
quantizer, its YAML and the calibration pass that feeds the Hessians come later.
"""
