"""`python -m harness sensitivity`: which groups of layers can take 4 bits (config.py, groups.py, run.py,
outputs.py)."""
