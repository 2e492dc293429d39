"""`harness train` with a constant learning rate against a bare PEFT + bitsandbytes loop at the same settings: does
the harness reach the same perplexity after training as the loop a researcher writes by hand?

    .venv/bin/python benchmarks/schedule_parity.py                 # ~6 min on 2 CPU cores
    .venv/bin/python benchmarks/schedule_parity.py --seeds 0 1 2 3 --steps 20

Settings (the issue's): the embedded SmolLM2-135M, NF4 + double quantization in bitsandbytes' Linear4bit, LoRA
r=8 (alpha 16, no dropout) on q_proj and v_proj, 20 steps of 4 x 256 tokens of the Austen train split, AdamW at
lr 2e-4, fp32 compute on the CPU.
  harness   harness.training.run.run with train.scheduler=constant, train.warmup_ratio=0 and
            train.max_grad_norm=0 (the bare loop neither warms up nor clips); also once with the default
            schedule (10% warm-up, cosine decay), for contrast;
  bare      load_model, the linear layers replaced by bitsandbytes Linear4bit (harness.models.quantize with
            module=bitsandbytes: the same Params4bit the harness builds), peft.get_peft_model, torch AdamW, and per
            step forward / backward / step / zero_grad on the batches harness.training.loop.batches draws for the
            same seed, one per seed in --seeds: their spread is the noise the harness' figure is read against.
Both are scored by the same function (harness.evaluation.perplexity on the first 4,096 validation tokens, windows
of 1,024), so only the training differs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile

import torch

MODEL, DATA = {"name": "smollm2-135m"}, {"name": "janeausten"}
QUANTIZER = {"name": "nf4", "double_quant": True, "compute_dtype": "float32"}
LORA = {"name": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
LR, BATCH, SEQ, EVAL_TOKENS = 2e-4, 4, 256, 4096


def harness_run(steps: int, seed: int, scheduler: str, warmup: float, clip: float) -> float:
    from harness.training.config import TrainConfig, TrainSettings
    from harness.training.run import run

    settings = TrainSettings(steps=steps, batch_size=BATCH, seq_len=SEQ, lr=LR, eval_tokens=EVAL_TOKENS, seed=seed,
                             scheduler=scheduler, warmup_ratio=warmup, max_grad_norm=clip, forgetting_tokens=0,
                             progress=False)
    cfg = TrainConfig(model=MODEL, data=DATA, quantizer=QUANTIZER, adapter=LORA, train=settings,
                      module="bitsandbytes", device="cpu", compute_dtype="float32", merge=False,
                      output_dir=tempfile.mkdtemp(prefix="schedule-parity-"))
    with contextlib.redirect_stdout(io.StringIO()):
        return run(cfg)["perplexity_after"]


def bare_run(steps: int, seed: int) -> float:
    import peft

    from harness.config import quantizer_config
    from harness.data.corpus import data_config, load_corpus
    from harness.data.tokens import pack, tokenize
    from harness.evaluation.perplexity import perplexity, prefix_token_id
    from harness.models.quantize import quantize_model
    from harness.models.sources import load_model, model_config
    from harness.training.loop import batches

    torch.manual_seed(seed)
    model, tokenizer = load_model(model_config(MODEL))
    quantize_model(model, quantizer_config(QUANTIZER), module="bitsandbytes")
    torch.manual_seed(seed)
    model = peft.get_peft_model(model, peft.LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                                       target_modules=LORA["targets"]))
    corpus = load_corpus(data_config(DATA))
    data = batches(pack(tokenize(corpus.train, tokenizer), SEQ), BATCH, seed)
    # weight_decay 0: the harness default (torch's AdamW would decay by 0.01), so the loops differ in nothing
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    torch.manual_seed(seed)
    model.train()
    for _ in range(steps):
        ids = next(data)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    ids = tokenize(corpus.validation, tokenizer)[:EVAL_TOKENS]
    return perplexity(model, ids, 1024, prefix_token=prefix_token_id(tokenizer)).perplexity


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    constant = harness_run(args.steps, args.seeds[0], "constant", 0.0, 0.0)
    cosine = harness_run(args.steps, args.seeds[0], "cosine", 0.1, 1.0)
    bare = {seed: bare_run(args.steps, seed) for seed in args.seeds}
    spread = statistics.stdev(bare.values()) if len(bare) > 1 else float("nan")
    print(f"perplexity after {args.steps} steps (4,096 validation tokens), lr {LR:g}, seed {args.seeds[0]}:")
    print(f"  harness train.scheduler=constant warmup 0, no clipping  {constant:.3f}")
    print(f"  harness defaults (10% warm-up, cosine, clip 1.0)        {cosine:.3f}")
    for seed, value in bare.items():
        print(f"  bare PEFT + bitsandbytes loop, seed {seed}                 {value:.3f}")
    print(f"  harness constant - bare (seed {args.seeds[0]}): {constant - bare[args.seeds[0]]:+.4f}; "
          f"bare seed-to-seed sd {spread:.3f}")


if __name__ == "__main__":
    main()
