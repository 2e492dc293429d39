"""harness.evaluation.config: the shipped eval and paper configs compose and validate; bad values name the field."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from harness.evaluation.config import EvalConfig
from tests.evaluation.conftest import compose_eval


def test_shipped_eval_and_paper_configs_compose_and_validate():
    cfg = compose_eval(["+paper=qlora_table2"])
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, EvalConfig)
    assert set(obj.quantizers) == {"int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq"}
    # every published label must name a configuration the paper config evaluates
    assert set(obj.paper.published) <= set(obj.quantizers)
    assert all(q.compute_dtype == "float32" for q in obj.quantizers.values())


@pytest.mark.parametrize("override,field", [("stride=4096", "stride"), ("module=gptq", "module"),
                                            ("split=dev", "split"), ("num_fewshot=-1", "num_fewshot"),
                                            ("+task_datasets.arc_easy=' '", "task_datasets.arc_easy")])
def test_bad_eval_values_name_the_field(override, field):
    with pytest.raises(ValueError, match=f"eval.{field}="):
        OmegaConf.to_object(compose_eval([override]))


def test_task_batch_size_below_one_names_the_field():
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match=r"eval\.task_batch_size=0 must be at least 1"):
        OmegaConf.to_object(compose_eval(["task_batch_size=0"]))
