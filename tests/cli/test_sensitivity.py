"""harness.cli.sensitivity: bad knobs are one-line user errors, found by the command's check before any work."""

from __future__ import annotations

import re

import pytest

from tests.sensitivity.conftest import compose_sensitivity


@pytest.mark.parametrize("override,fragment", [
    ("top_k=[0,2]", "sensitivity.top_k=[0, 2] must be a non-empty list of integers >= 1"),
    ("top_k=[]", "sensitivity.top_k=[] must be"),
    ("granularity=blocks", "sensitivity.granularity='blocks' is not accepted; use coarse"),
    ("mixed_by=[layer]", "layer needs granularity=layer"),
    ("heldout_split=validation", "sensitivity.heldout_split='validation' is the split"),
    ("keep_8bit.compute_dtype=float16", "keep_8bit.compute_dtype (float16) differ"),
    ("context_length=4096", "sensitivity.context_length=4096 is above the maximum positions"),
])
def test_bad_knobs_are_one_line_user_errors(override, fragment):
    from harness.cli.sensitivity import check
    from harness.user_error import UserError

    with pytest.raises(UserError, match=re.escape(fragment)):
        check(compose_sensitivity(["model=tiny-llama", "context_length=64", "compute_dtype=float32", override]))


def test_without_a_context_length_the_models_positions_bound_the_window():
    """tiny-llama has 256 positions: the default (null) resolves to 256 instead of asking the user to set it."""
    from harness.cli.sensitivity import check
    from harness.models.sources import model_config, resolve_context_length

    cfg = compose_sensitivity(["model=tiny-llama", "compute_dtype=float32"])
    check(cfg)  # before: "sensitivity.context_length=1024 is above the maximum positions"
    assert resolve_context_length(cfg.context_length, model_config(cfg.model)) == 256
