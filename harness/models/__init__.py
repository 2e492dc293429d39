"""Models: where they come from (sources.py: embedded, hub, local, tiny) and how their linear layers are
replaced by quantized ones (quantize.py)."""
