"""harness.sweep.config: the cell hash covers the result, not the bookkeeping."""

from __future__ import annotations

from harness.sweep.plan import plan_sweep
from tests.sweep.conftest import TINY


def test_cell_hash_covers_the_result_not_the_bookkeeping():
    cells = {tuple(c.overrides): c.hash for c in plan_sweep(["adapter.rank=4,8", *TINY]).cells}
    again = plan_sweep(["adapter.rank=4", *TINY, "output_dir=/elsewhere", "train.progress=true",
                        "sweep.name=other"]).cells
    assert again[0].hash == cells[("adapter.rank=4", *TINY)]  # where it is written does not change a result
    assert len(set(cells.values())) == 2  # the rank does
    assert plan_sweep(["adapter.rank=4", *TINY, "train.seed=1"]).cells[0].hash != again[0].hash


def test_task_settings_change_the_hash_only_when_there_are_tasks():
    """Cells hashed before train.tasks existed keep their hash (a sweep resumes across the upgrade): without tasks
    the task settings are left out; with tasks they are in, limit and all."""
    plain = plan_sweep(["adapter.rank=4", *TINY]).cells[0].hash
    assert plan_sweep(["adapter.rank=4", *TINY, "train.task_limit=5"]).cells[0].hash == plain
    tasks = plan_sweep(["adapter.rank=4", *TINY, "train.tasks=[austen_next_sentence]"]).cells[0].hash
    limited = plan_sweep(["adapter.rank=4", *TINY, "train.tasks=[austen_next_sentence]",
                          "train.task_limit=5"]).cells[0].hash
    assert len({plain, tasks, limited}) == 3


def test_knobs_added_later_keep_older_hashes_at_their_defaults():
    """train.scheduler=cosine and train.eval_context=null reproduce what cells did before those knobs existed
    (cosine decay; a 1024-token window capped at the model's positions), so they hash as before; another value
    is another cell."""
    default = plan_sweep(["adapter.rank=4", *TINY, "model.max_positions=2048", "train.eval_context=null"]).cells[0].hash
    assert plan_sweep(["adapter.rank=4", *TINY, "model.max_positions=2048", "train.eval_context=1024"]).cells[0].hash == default  # as before
    assert plan_sweep(["adapter.rank=4", *TINY, "model.max_positions=2048", "train.eval_context=null", "train.scheduler=cosine"]
                      ).cells[0].hash == default
    assert plan_sweep(["adapter.rank=4", *TINY, "model.max_positions=2048", "train.eval_context=null", "train.scheduler=constant"]
                      ).cells[0].hash != default
