"""harness.report.pareto: the frontier on sets small enough to reason by hand (both quality directions, ties, NaN
points), against the definition on random sets, and which metrics count as fine-tuned quality."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from harness.report.pareto import describe, figure_stem, frontier, parse_stem, quality

# (cost, perplexity): (3, 4) costs more than (2, 3) and is worse; (5, 1) costs more than (4, 1) for the same value
COST = [1, 2, 3, 4, 5]
PPL = [5, 3, 4, 1, 1]
ON = [True, True, False, True, False]


def test_lower_is_better_by_hand():
    assert frontier(COST, PPL).tolist() == ON


def test_higher_is_better_is_the_mirror_image():
    accuracy = [-v for v in PPL]  # the same order of merit, read the other way
    assert frontier(COST, accuracy, higher_is_better=True).tolist() == ON
    # read as lower-is-better, the cheapest point (1, -5) is also the best, so it alone stays
    assert frontier(COST, accuracy).tolist() == [True, False, False, False, False]


def test_equal_points_are_both_on_the_frontier_or_both_off():
    # two equal points, a point beating both, then the same two equal points alone
    assert frontier([2, 2], [3, 3]).tolist() == [True, True]
    assert frontier([2, 2, 1], [3, 3, 3]).tolist() == [False, False, True]
    # equal cost, different value: the worse one is dominated
    assert frontier([2, 2], [3, 4]).tolist() == [True, False]


def test_nan_points_are_ignored():
    cost = [1, math.nan, 2, 0.5]
    ppl = [5, 0.1, 3, math.nan]  # unread, the NaN points would dominate: 0.1 is the best value, 0.5 the cheapest
    assert frontier(cost, ppl).tolist() == [True, False, True, False]
    assert frontier([], []).tolist() == []


def dominates(a, b) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=12))
def test_random_sets_match_the_definition(points):
    cost, value = [p[0] for p in points], [p[1] for p in points]
    on = frontier(cost, value)
    for i, p in enumerate(points):
        assert on[i] == (not any(dominates(q, p) for q in points))


def test_which_metrics_are_fine_tuned_quality():
    assert not quality("perplexity_after").higher_is_better
    assert quality("austen_cloze/acc_norm_merged").higher_is_better
    for other in ("perplexity_before", "perplexity_full_precision", "austen_cloze/acc_before",
                  "austen_cloze/perplexity_after", "austen_cloze/sample_len_after", "peak_memory_bytes"):
        assert quality(other) is None, other


def test_file_names_round_trip_and_caption_the_direction():
    stem = figure_stem("austen_cloze/acc_after", "peak_memory_bytes")
    assert stem == "pareto_austen_cloze__acc_after_vs_peak_memory"  # the example
    q, cost = parse_stem(stem)
    assert (q.metric, cost) == ("austen_cloze/acc_after", "peak_memory_bytes")
    title, caption = describe(stem)
    assert "austen_cloze" in title and "higher is better" in caption and "mean over its ok seeds" in caption
    assert "lower is better" in describe(figure_stem("perplexity_merged", "train_seconds"))[1]
    assert parse_stem("perplexity_vs_rank") is None and describe("memory_breakdown") is None

