"""`python -m harness errors`: quantization error of weights (analysis.py), its tables (tables.py), figures
(plots.py) and the run that writes them (run.py)."""
