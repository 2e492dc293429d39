"""harness.sweep.plan: a grid's axes and the command line combine as Hydra's BasicSweeper does, and every shipped grid
composes with every cell validated, before any work."""

from __future__ import annotations

import pytest

from harness.sweep.plan import plan_sweep
from tests.conftest import REPO
from tests.sweep.conftest import TINY


def test_grid_axes_and_command_line_combine_as_hydra_does():
    cells = plan_sweep(["+grid=blocksize", *TINY]).cells
    assert len(cells) == 2 * 4  # quantizer x block size
    # a key given on the command line replaces the grid's axis, as Hydra's BasicSweeper does
    assert len(plan_sweep(["+grid=blocksize", "quantizer.block_size=64", *TINY]).cells) == 2


GRIDS = sorted(p.stem for p in (REPO / "experiments" / "grid").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS)
def test_every_shipped_grid_composes_and_every_cell_validates(grid):
    plan = plan_sweep([f"+grid={grid}"])  # the embedded model, as a user runs it
    assert plan.name == grid and str(plan.output_dir) == f"results/sweeps/{grid}"
    assert len(plan.cells) >= 4 and len({c.hash for c in plan.cells}) == len(plan.cells)
    assert all(c.status in ("planned", "skipped") for c in plan.cells)
