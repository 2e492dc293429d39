"""Evaluation: strided sliding-window perplexity, and the bridge to lm-eval for zero-shot tasks.

Perplexity follows the recipe transformers documents (windows of `context_length` tokens moved by `stride`,
each token scored once, token-weighted), with one addition that makes it comparable to lm-eval: a prefix token
(BOS, else EOS) is put in front so the first token of the text is scored too. With stride == context_length
every token is scored with the context lm-eval's `loglikelihood_rolling` gives it, so the two agree; a smaller
stride gives every scored token more context and a lower (better) perplexity.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness.quantize_model import guard_bnb_repack


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # tokens scored
    seconds: float
    tokens_per_second: float
    context_length: int
    stride: int
    # the scored tokens cut into consecutive segments of SEGMENT_TOKENS (the last may be shorter): summed NLL
    # (nats) and token count of each, so two models scored on the same text can be compared segment by segment
    segment_nll: list[float] = field(default_factory=list)
    segment_tokens: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def losses(self) -> dict:
        """The per-segment losses as a sweep record keeps them ({"nll": [...], "tokens": [...]})."""
        return {"nll": self.segment_nll, "tokens": self.segment_tokens}


# Segment length for paired comparisons. A paired bootstrap resamples segments, so they should be many (a 2,048-token
# evaluation gives 16) yet long enough that neighbouring segments are not nearly the same draw (128 tokens is a
# paragraph or two of the corpus); every segment is scored with its window's full context, so the cut changes
# no loss, only how the losses are grouped.
SEGMENT_TOKENS = 128


def prefix_token_id(tokenizer) -> int | None:
    """The token put before the text so its first token is scored: BOS, else EOS (as lm-eval does)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, context_length: int = 1024, stride: int | None = None,
               prefix_token: int | None = None) -> PerplexityResult:
    """ids: (n_tokens,) token ids of the text (no special tokens) -> token-weighted perplexity.

    Every token is scored exactly once. The window scoring tokens [start, end) feeds the model the
    `context_length` tokens before `end`, so with stride < context_length each scored token also sees
    context_length - stride tokens of earlier text.
    """
    guard_bnb_repack(model)  # an eval-mode forward must not repack bitsandbytes weights for good
    stride = stride or context_length
    if not 1 <= stride <= context_length:
        raise ValueError(f"stride={stride} must be between 1 and context_length={context_length}")
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"perplexity needs a non-empty 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    seq = ids.long()
    if prefix_token is not None:
        seq = torch.cat([torch.tensor([prefix_token]), seq])
    first = 1  # position 0 has no context and is never scored
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    token_nll = []  # (tokens scored in the window,) per window, float64 so sums over 10^5 tokens stay exact
    t0 = time.perf_counter()
    try:
        for start in range(first, seq.numel(), stride):
            end = min(start + stride, seq.numel())
            begin = max(0, end - 1 - context_length)
            inputs = seq[begin : end - 1].unsqueeze(0).to(device)
            targets = seq[start:end].to(device)
            logits = model(input_ids=inputs).logits[0, -(end - start):].float()
            token_nll.append(nn.functional.cross_entropy(logits, targets, reduction="none").double().cpu())
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    losses = torch.cat(token_nll)
    scored = losses.numel()
    segments = losses.split(SEGMENT_TOKENS)
    nll = losses.sum().item() / scored
    return PerplexityResult(math.exp(nll), nll, scored, seconds, scored / seconds, context_length, stride,
                            [s.sum().item() for s in segments], [s.numel() for s in segments])


# ---------------------------------------------------------------- lm-eval


def lm_eval_model(model: nn.Module, tokenizer, max_length: int = 1024, batch_size: int = 1):
    """Wrap an in-memory (quantized or adapted) model for lm-eval. HFLM leaves the model in eval mode.

    batch_size 1: lm-eval's own scoring, one request per forward pass (the reference path). Above 1: that many
    packed rows per forward pass (harness.packed_scoring): the same scores, 1.4-2.6x faster on 2 CPU cores.
    """
    from lm_eval.models.huggingface import HFLM

    from harness.packed_scoring import PackedHFLM

    guard_bnb_repack(model)  # HFLM calls model.eval(); later training must not meet repacked weights
    device = str(next(model.parameters()).device)
    wrapper = PackedHFLM if batch_size > 1 else HFLM
    return wrapper(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size,
                   device=device)


def lm_eval_rolling_nll(model: nn.Module, tokenizer, text: str, max_length: int = 1024) -> tuple[float, int]:
    """lm-eval's loglikelihood_rolling on `text` -> (total negative log-likelihood in nats, tokens scored)."""
    from lm_eval.api.instance import Instance

    was_training = model.training
    lm = lm_eval_model(model, tokenizer, max_length=max_length)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (loglik,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
    model.train(was_training)
    return -loglik, len(lm.tok_encode(text))


def local_task_dir(task_yamls: list[Path], built: dict[str, Path] | None = None) -> Path:
    """Copy task YAMLs (and the Python helpers beside them) into a temporary include dir, `data_files` absolute.

    Task files name their data relative to themselves (or with ~); lm-eval would resolve such paths against the
    working directory, so they are rewritten before lm-eval reads them. `!function helpers.fn` entries (as in
    lm-eval's own HellaSwag and WinoGrande YAMLs) are imported from the YAML's folder, hence the .py copies.
    `built`: task name -> the data file the harness built for it (harness.tasks.BUILT_TASKS).
    """
    from harness.tasks import DATA_FILES, data_path

    out = Path(tempfile.mkdtemp(prefix="harness-tasks-"))
    for path in task_yamls:
        text = path.read_text()
        task = re.search(r"^task:\s*(\S+)", text, re.MULTILINE)
        data = (built or {}).get(task.group(1) if task else "")
        text = DATA_FILES.sub(lambda m, path=path, data=data: m.group(1) + str(data or data_path(path, m.group(2))),
                              text)
        (out / path.name).write_text(text)
        for helper in path.parent.glob("*.py"):
            shutil.copy(helper, out / helper.name)
    return out


def simple_evaluate_local(model: nn.Module, tokenizer, tasks: list[str], task_files: list[Path],
                          limit: int | None = None, num_fewshot: int = 0, max_length: int = 1024,
                          batch_size: int = 1, log_samples: bool = False) -> dict:
    """lm-eval's simple_evaluate on local task files -> its whole output (with per-item `samples` if asked).

    Tasks whose data the harness builds (austen_cloze) are built here at first use, into the default cache.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harness.tasks import built_task_data

    built = {task: data.path for task, data in built_task_data(tasks).items()}
    # local task files only: indexing lm-eval's thousands of built-in task YAMLs took ~9 s per call on 2 cores
    manager = TaskManager(include_path=str(local_task_dir(task_files, built)), include_defaults=False)
    was_training = model.training
    lm = lm_eval_model(model, tokenizer, max_length, batch_size)
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                              log_samples=log_samples, bootstrap_iters=0, verbosity="ERROR")
    model.train(was_training)
    return results


def run_lm_eval_tasks(model: nn.Module, tokenizer, tasks: list[str], task_files: list[Path],
                      limit: int | None = None, num_fewshot: int = 0, max_length: int = 1024,
                      batch_size: int = 1) -> dict[str, dict]:
    """Zero-shot (or few-shot) lm-eval tasks from local task files -> {task: {metric: value}}."""
    results = simple_evaluate_local(model, tokenizer, tasks, task_files, limit, num_fewshot, max_length, batch_size)
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in results["results"].items()}
