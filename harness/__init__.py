"""The quantization research harness. `python -m harness <command> [hydra overrides]`."""
