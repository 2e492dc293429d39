"""Batched lm-eval loglikelihood scoring: each context once with all its continuations, in packed rows.

lm-eval's HFLM scores every (context, continuation) request as a sequence of its own and computes vocabulary
logits at every position. That repeats work: a 4-choice item runs its context four times, and the output
projection (a fifth of a 135M model's multiply-adds) runs at positions whose logits are thrown away; on
austen_next_sentence lm-eval's path does ~1.7x the arithmetic needed, on a cloze passage ~1.25x.
Here one row holds a context followed by each of its continuations; a block mask lets every continuation see the
context and itself only, at the positions it would have alone; logits are computed only where a continuation
token is predicted; `batch_size` rows share one forward pass. The scores are lm-eval's up to float rounding
(tests/test_cloze.py compares the two paths).
"""

from __future__ import annotations

import inspect

import torch
from lm_eval.models.huggingface import HFLM

# Padded tokens per forward pass on a CPU: past a few thousand the activations outgrow the caches and matmuls slow
# down. On 2 EPYC cores, cloze rows of ~280 tokens scored at 1.26 rows/s sixteen at a time (4.5K tokens) and at
# 1.7-1.9 rows/s with any cap from 512 to 2048 tokens (run-to-run noise ~8%); multiple-choice rows alike.
CPU_BATCH_TOKENS = 1024


class PackedHFLM(HFLM):
    """HFLM whose loglikelihood requests are packed and batched (see the module docstring)."""

    def _packing_supported(self) -> bool:
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # PEFT
        params = inspect.signature(model.forward).parameters
        # flash-attention kernels ignore a custom mask; packing needs explicit positions and logits_to_keep
        return (self.backend == "causal" and "position_ids" in params and "logits_to_keep" in params
                and getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager"))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """requests: [((context, continuation), context tokens, continuation tokens)] -> [(loglik, is_greedy)]."""
        if not self._packing_supported():
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, _) in enumerate(requests):
            groups.setdefault(tuple(context), []).append(i)
        rows, too_long = [], []  # rows: (tokens in the row, context tokens, indices of its requests)
        for context, members in groups.items():
            # lm-eval cuts a too-long request from the left, each continuation by its own length: leave those to it
            if len(context) + max(len(requests[i][2]) for i in members) <= self.max_length + 1:
                length = len(context) + sum(len(requests[i][2]) - 1 for i in members)
                rows.append((length, list(context), members))
            else:
                too_long += members
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        if too_long:
            for i, result in zip(too_long, super()._loglikelihood_tokens([requests[i] for i in too_long],
                                                                          disable_tqdm, override_bs)):
                results[i] = result
        for batch in self._batches(rows, override_bs or self.batch_size):
            for i, result in self._score_rows(batch, requests):
                results[i] = result
                if requests[i][0] is not None:  # rolling windows carry no cache key (as in HFLM)
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], result)
        return results

    def _batches(self, rows, batch_size: int):
        """Up to batch_size rows per forward pass, longest first so each batch pads little (as lm-eval orders its
        requests); on a CPU also at most CPU_BATCH_TOKENS padded tokens."""
        rows = sorted(rows, key=lambda row: -row[0])
        cap = CPU_BATCH_TOKENS if torch.device(self.device).type == "cpu" else float("inf")
        batch: list = []
        for row in rows:
            if batch and (len(batch) == batch_size or (len(batch) + 1) * batch[0][0] > cap):
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch

    @torch.no_grad()
    def _score_rows(self, rows, requests):
        n, length = len(rows), rows[0][0]  # the longest row comes first
        ids = torch.zeros(n, length, dtype=torch.long)
        positions = torch.zeros(n, length, dtype=torch.long)
        segment = torch.full((n, length), -1)  # 0: context, j: continuation j, -1: padding
        keep = torch.zeros(n, length, dtype=torch.bool)  # where a continuation token is predicted
        targets = []  # (request, row, predicting positions, continuation tokens)
        for r, (_, context, members) in enumerate(rows):
            c = len(context)
            ids[r, :c], positions[r, :c], segment[r, :c] = torch.tensor(context), torch.arange(c), 0
            at = c
            for j, i in enumerate(members, 1):
                fed = requests[i][2][:-1]  # the last continuation token is predicted, never fed
                span = slice(at, at + len(fed))
                ids[r, span] = torch.tensor(fed, dtype=torch.long)
                positions[r, span] = torch.arange(c, c + len(fed))  # where it would sit right after the context
                segment[r, span] = j
                targets.append((i, r, [c - 1, *range(at, at + len(fed))], requests[i][2]))
                at += len(fed)
            keep[r, c - 1] = True
            keep[r, c:at] = True
        query, key = segment[:, :, None], segment[:, None, :]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = causal & ((key == 0) | (key == query)) & (key >= 0)  # a continuation sees the context and itself
        allowed |= torch.eye(length, dtype=torch.bool)  # padding attends to itself: no all-masked row, no NaN
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(n, 1, length, length, dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), logits_to_keep=keep.to(self.device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()  # (kept positions, vocab), row-major order
        flat = keep.flatten().cumsum(0).view(n, length) - 1  # (row, position) -> its index among kept positions
        for i, r, predicting, continuation in targets:
            scores = logprobs[flat[r, predicting]]
            tokens = torch.tensor(continuation)
            yield i, (float(scores.gather(1, tokens[:, None]).sum()), bool((scores.argmax(-1) == tokens).all()))
