"""Evaluation: perplexity (perplexity.py), lm-eval tasks (tasks.py: which tasks exist; lm_eval_run.py: running
them; packed_scoring.py: batched loglikelihoods), the austen_cloze task (cloze.py), and the eval command's work
(config.py, run.py, paper_table.py)."""
