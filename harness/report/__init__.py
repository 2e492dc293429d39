"""A sweep's results for people: tables (tables.py, comparisons.py), figures (figures*.py, drawn from
sweep_data.py, in style.py's style) and report.md (markdown.py)."""
