"""Strided sliding-window perplexity, with the per-segment losses paired comparisons read.

Perplexity follows the recipe transformers documents (windows of `context_length` tokens moved by `stride`,
each token scored once, token-weighted), with one addition that makes it comparable to lm-eval: a prefix token
(BOS, else EOS) is put in front so the first token of the text is scored too. With stride == context_length
every token is scored with the context lm-eval's `loglikelihood_rolling` gives it, so the two agree; a smaller
stride gives every scored token more context and a lower (better) perplexity.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from quantizers.bnb_layers import guard_bnb_repack


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
