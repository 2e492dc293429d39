"""Sweeps: the plan of a grid (plan.py), one cell (config.py, budget.py, cell.py), work shared between cells
(bases.py), the tidy table of every record (collect.py), and the paper reproductions (papers.py)."""
