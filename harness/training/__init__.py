"""Fine-tuning: the schema (config.py), the plan and the model built from it (plan.py), the loop (loop.py),
memory measured from tensors (accounting.py), and a whole run with its outputs (run.py)."""
