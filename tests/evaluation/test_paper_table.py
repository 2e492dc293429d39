"""harness.evaluation.paper_table: the paper table's ordering claims follow the numbers."""

from __future__ import annotations

import math

import pandas as pd

from harness.evaluation.config import PaperConfig
from harness.evaluation.paper_table import ordering_claims, wide


def test_ordering_claims_follow_the_numbers():
    paper = PaperConfig(name="t", published={"a": 3.0, "b": 2.0, "c": 1.0}, metric="perplexity")
    rows = [("a", 10.0), ("b", 12.0), ("c", 5.0)]  # ours: b worst, c best
    frame = pd.DataFrame([{"configuration": k, "metric": "perplexity", "value": v} for k, v in rows])
    claims = ordering_claims(wide(frame), paper)
    assert claims["paper_order"] == "a > b > c" and claims["our_order"] == "b > a > c"
    assert claims["worst_matches"] is False and claims["best_matches"] is True
    assert claims["full_order_matches"] is False
    frame.loc[frame.configuration == "c", "value"] = math.nan  # a failed configuration drops out
    assert ordering_claims(wide(frame), paper)["our_order"] == "b > a"
