"""Evaluation: perplexity (perplexity.py), lm-eval tasks (tasks.py: what a task name means, local or lm-eval's;
lm_eval_registry.py: lm-eval's own registry and its offline checks; lm_eval_run.py: running them;
packed_scoring.py: batched loglikelihoods), the austen_cloze task (cloze.py), and the eval command's work
(config.py, run.py, paper_table.py)."""
