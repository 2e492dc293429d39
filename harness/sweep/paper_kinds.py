"""Every kind of paper table, imported together so that harness.registry.PAPER_TABLES finds them all:
harness.sweep.papers (dtypes, ranks, merge) and harness.sweep.papers_methods (methods, table1)."""

from harness.sweep import papers, papers_methods  # noqa: F401  (each registers its kinds on import)
