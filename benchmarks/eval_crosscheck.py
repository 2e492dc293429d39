"""Perplexity of the default model on the default test split: our sliding-window figure beside lm-eval's
loglikelihood_rolling on the same text, and the evaluation speed (tokens/s). Prints figures; not a test.

    .venv/bin/python benchmarks/eval_crosscheck.py [--chars 70000] [--context 1024] [--dtype float32]
"""

import argparse
import math
import time

import torch

from harness.data.corpus import DataConfig, load_corpus
from harness.data.tokens import tokenize
from harness.evaluation.lm_eval_run import lm_eval_rolling_nll
from harness.evaluation.perplexity import perplexity, prefix_token_id
from harness.models.sources import ModelConfig, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=70_000, help="characters of the test split (~16K tokens)")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-lm-eval", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model, tokenizer = load_model(ModelConfig(dtype=args.dtype))
    text = load_corpus(DataConfig(name="janeausten")).test[: args.chars]
    print(f"model + corpus loaded in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    ids = tokenize(text, tokenizer)
    ours = perplexity(model, ids, args.context, prefix_token=prefix_token_id(tokenizer))
    print(f"harness : perplexity {ours.perplexity:.4f} over {ours.tokens} tokens in {ours.seconds:.1f} s "
          f"({ours.tokens_per_second:.0f} tokens/s, {args.dtype}, context {args.context})")
    if args.skip_lm_eval:
        return
    t0 = time.perf_counter()
    nll, tokens = lm_eval_rolling_nll(model, tokenizer, text, max_length=args.context)
    seconds = time.perf_counter() - t0
    theirs = math.exp(nll / tokens)
    print(f"lm-eval : perplexity {theirs:.4f} over {tokens} tokens in {seconds:.1f} s (loglikelihood_rolling)")
    print(f"relative difference: {abs(ours.perplexity - theirs) / theirs:.2e}")


if __name__ == "__main__":
    main()
