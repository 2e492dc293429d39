"""Training memory from a model config alone: the meta-device predictor (predictor.py), the `memory` command's
report (report.py), and QLoRA's double-quantization table (double_quant.py)."""
