"""The eval command's work: perplexity (and lm-eval tasks) of a model
in full precision and under each configured quantizer, as one tidy table plus a paper table when asked for.

Every configuration is evaluated on a fresh copy of the full-precision model, so one quantizer never sees another's
rounding; a configuration that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import copy
import traceback

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.config import quantizer_config
from harness.device import resolve_compute_dtype, resolve_device
from harness.records import write_run_json
from harness.user_error import validating


def evaluate_configuration(model, tokenizer, ids, cfg, label: str, quantizer_node, tasks=None) -> list[dict]:
    """One row per metric for one configuration (label 'full precision' when quantizer_node is None).
    tasks: cfg.tasks resolved (harness.evaluation.tasks.TaskSet); None: resolved here."""
    from harness.evaluation.lm_eval_run import run_lm_eval_tasks
    from harness.evaluation.perplexity import perplexity, prefix_token_id
    from harness.models.quantize import quantize_model
    from quantizers.storage import model_storage_bytes

    bits = 32.0 if cfg.model.dtype == "float32" else 16.0
    device = resolve_device(cfg.device)
    if quantizer_node is not None:
        qcfg = quantizer_config(quantizer_node)
        if qcfg.compute_dtype == "auto":  # the quantizer's own explicit choice wins over the run's
            qcfg.compute_dtype = resolve_compute_dtype(cfg.compute_dtype, device)
        model = copy.deepcopy(model)
        calibration, cache = calibration_for(qcfg, cfg, tokenizer, device)
        if calibration is not None:
            model.to(device)  # the calibration pass runs the model: on the GPU where there is one
        report = quantize_model(model, qcfg, module=cfg.module, calibration=calibration, cache=cache)
        bits = report.bits_per_param
    model.to(device)
    result = perplexity(model, ids, cfg.context_length, cfg.stride, prefix_token_id(tokenizer))
    values = {"perplexity": result.perplexity, "nll": result.nll, "tokens": result.tokens,
              "tokens_per_second": result.tokens_per_second, "seconds": result.seconds,
              "bits_per_param": bits, "model_bytes": model_storage_bytes(model)}
    if quantizer_node is not None and report.calibration_peak_bytes:
        layers = report.layers
        values |= {"quantize_seconds": report.quantize_seconds,
                   "quantize_peak_memory_bytes": report.calibration_peak_bytes,
                   "layer_output_error": sum(r.output_error for r in layers) / len(layers),
                   "layer_output_error_rtn": sum(r.rtn_output_error for r in layers) / len(layers)}
    if cfg.tasks:
        tasks = tasks or resolved_tasks(cfg)
        scores = run_lm_eval_tasks(model, tokenizer, tasks, limit=cfg.task_limit, num_fewshot=cfg.num_fewshot,
                                   max_length=cfg.context_length, batch_size=cfg.task_batch_size)
        for task, metrics in scores.metrics.items():
            values.update({f"{task}/{name}": value for name, value in metrics.items()})
    return [{"configuration": label, "metric": k, "value": float(v)} for k, v in values.items()]


def resolved_tasks(cfg):
    """cfg.tasks as a TaskSet, checked (an unknown name, missing data, an uncached dataset offline raise)."""
    from harness.evaluation.tasks import resolve_tasks

    return resolve_tasks(cfg.tasks, cfg.task_datasets, cfg.num_fewshot)


def calibration_for(qcfg, cfg, tokenizer, device):
    """(a calibrated quantizer's batches from the eval's corpus, never its evaluated split; where its calibrated
    base is cached), else (None, None)."""
    if not getattr(qcfg, "calibrated", False):
        return None, None
    from dataclasses import asdict

    from harness.data.calibration import calibration_batches, check_calibration_split
    from harness.data.corpus import data_config
    from harness.models.calibrated import calibrated_base_path
    from harness.models.sources import model_config

    check_calibration_split(qcfg, cfg.split, "split")
    data = data_config(cfg.data)
    batches = [b.to(device) for b in calibration_batches(data, tokenizer, qcfg.calibration)]
    return batches, calibrated_base_path(model_config(cfg.model), qcfg, cfg.module, asdict(data), device)


def run(cfg: DictConfig) -> pd.DataFrame:
    from harness.data.corpus import load_corpus
    from harness.data.tokens import tokenize
    from harness.evaluation.paper_table import write_eval_outputs
    from harness.evaluation.tasks import built_task_data
    from harness.models.sources import load_model, resolve_context_length

    tasks = resolved_tasks(cfg)  # an unknown task, missing data, an uncached dataset offline stop here, unloaded
    model_cfg = OmegaConf.to_object(cfg.model)
    model, tokenizer = load_model(model_cfg)
    # some models state their limit only once loaded; the resolved window goes into run.json
    with validating():
        cfg.context_length = resolve_context_length(cfg.context_length, model_cfg, model, stride=cfg.stride)
    # built tasks (austen_cloze) are built now, before any evaluation; their items' hash goes into run.json
    task_data = {task: data.record() for task, data in built_task_data(tasks.names).items()}
    corpus = load_corpus(OmegaConf.to_object(cfg.data))
    ids = tokenize(getattr(corpus, cfg.split), tokenizer)
    if cfg.max_tokens:
        ids = ids[: cfg.max_tokens]
    print(f"evaluating {cfg.model.name} on {corpus.name}/{cfg.split}: {ids.numel()} tokens, "
          f"context {cfg.context_length}, stride {cfg.stride or cfg.context_length}")
    rows = []
    configurations = [("full precision", None)] + list(cfg.quantizers.items())
    for label, node in configurations:
        try:
            new = evaluate_configuration(model, tokenizer, ids, cfg, label, node, tasks)
            status, error = "ok", ""
        except Exception as exc:  # one failed configuration must not lose the others
            new, status, error = [], "failed", "".join(traceback.format_exception_only(exc)).strip()
            traceback.print_exc()
        rows += [dict(r, status=status, error=error) for r in new] or [
            {"configuration": label, "metric": "perplexity", "value": float("nan"), "status": status, "error": error}]
        ppl = next((r["value"] for r in new if r["metric"] == "perplexity"), float("nan"))
        print(f"  {label:<16} perplexity {ppl:8.3f}  [{status}] {error}")
    frame = pd.DataFrame(rows).assign(model=cfg.model.name, corpus=corpus.name, split=cfg.split)
    frame = pd.concat([frame, increase_rows(frame)], ignore_index=True)
    resolved = {"task_data": task_data} if task_data else None
    paths = write_eval_outputs(frame, cfg) + [write_run_json(cfg.output_dir, cfg, "eval", resolved)]
    print("wrote " + ", ".join(str(p) for p in paths))
    return frame


def increase_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """perplexity_increase rows: each configuration's perplexity minus full precision's."""
    ppl = frame[frame.metric == "perplexity"].set_index("configuration")
    if "full precision" not in ppl.index:
        return frame.iloc[:0]
    out = ppl.assign(value=ppl["value"] - ppl.loc["full precision", "value"], metric="perplexity_increase")
    return out.reset_index()[frame.columns]


def check(cfg: DictConfig) -> None:
    """Validate the whole eval config (model, data, every quantizer) before anything is loaded or evaluated."""
    from harness.config import validated
    from harness.data.corpus import check_corpus, data_config
    from harness.evaluation.config import EvalConfig
    from harness.models.skeleton import check_available
    from harness.models.sources import check_context_length, model_config

    with validating():
        validated(EvalConfig, cfg)
        check_available(model_config(cfg.model))  # cached or reachable; a local config readable
        check_context_length(cfg.context_length, model_config(cfg.model))  # where the limit is known unloaded
        check_corpus(data_config(cfg.data))  # the text loads and splits, before any model
        resolved_tasks(cfg)
    from harness.data.calibration import check_calibration_split

    for label, node in cfg.quantizers.items():
        with validating(f"quantizers.{label}"):
            check_calibration_split(quantizer_config(node), cfg.split, "split")
