"""What `harness train`'s loop costs over a bare PEFT + bitsandbytes loop: the same model, layers, data and seed.

    .venv/bin/python benchmarks/train_overhead.py                          # 4 configurations, ~7 min on 2 cores
    .venv/bin/python benchmarks/train_overhead.py --configs nf4-dq/qv --steps 8 --repeats 2

Every configuration (LoRA r=8 on the default model, SmolLM2-135M, fp32 compute on the CPU, batch 4 x 256):
  nf4-dq/qv, nf4-dq/all    nf4 + double quantization in bitsandbytes' Linear4bit; LoRA on q_proj, v_proj / all-linear
  fp32/qv, fp32/all        the unquantized fp32 base (quantizer none)
is trained for --steps optimizer steps three times, in one process:
  harness  harness.training.run.run(TrainConfig(..., module="bitsandbytes", merge=False)), with train.eval_tokens
           small so its before/after evaluations stay short; the figure is read from what it returns and
           writes: (steps - 1) x tokens per step / (train_seconds - the first step's seconds from loss.csv),
           so it covers the whole loop after the first step, including whatever run() does around it
           (optimizer creation, peak-memory accounting, learning-rate schedule, gradient clipping);
  bare     the loop written the obvious way: harness.models.sources.load_model, then the nn.Linear layers replaced
           by bitsandbytes Linear4bit through harness.models.quantize.quantize_model(model, cfg,
           module="bitsandbytes") (the same Params4bit / QuantState the harness builds; nothing for fp32),
           peft.get_peft_model with the same LoRA config, torch.optim.AdamW (same lr), then per step:
           forward with labels, loss.backward(), optimizer.step(), optimizer.zero_grad(); no logging,
           no clipping, no schedule. The figure is (steps - 1) x tokens per step / the wall time of
           steps 2..N, one perf_counter pair around the loop.
  bare+reuse  the bare loop inside harness.measure.reuse_freed_memory, the allocator setting `harness train`
           trains under on the CPU (freed memory kept for the next step instead of faulted in afresh): the
           loops compared with the allocator equal, so harness / bare+reuse is what the loop itself costs,
           and harness / bare (the issue's figure) adds what the allocator setting gains.
Warm-up, identical for both: the first step (it allocates the optimizer state and grows the allocator) is run
and left out of the figure; before any measured loop, an untimed 2-step bare loop warms the process up (its
first loop runs ~15% slower whichever side it is). Data: the train split of janeausten packed into seq_len blocks, batches drawn
in harness.training.loop.batches' seeded order, and torch.manual_seed(seed) before loading and before attaching
the adapter, as the harness does, so both start from the same weights on the same batches (the table's
step-1 losses agree when they do). Order: the three sides rotate with (configuration index + repeat), so
drift does not favour any; with --repeats > 1 the figures are medians.

Wall clock on a shared machine: before every loop the script waits (bounded by --wait-quiet) until other
processes leave the CPU alone, and the `other` column reports how many cores they used during the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_cost import ForeignLoad, load_averages  # noqa: E402

CONFIGS = {  # label -> (quantizer node, LoRA targets)
    "nf4-dq/qv": ({"name": "nf4", "double_quant": True}, ["q_proj", "v_proj"]),
    "nf4-dq/all": ({"name": "nf4", "double_quant": True}, ["all-linear"]),
    "fp32/qv": ({"name": "none"}, ["q_proj", "v_proj"]),
    "fp32/all": ({"name": "none"}, ["all-linear"]),
}
MODEL, DATA = {"name": "smollm2-135m"}, {"name": "janeausten"}
RANK, ALPHA, LR = 8, 16.0, 1e-3  # the harness' lora.alpha and train.lr defaults


def harness_loop(label: str, args) -> dict:
    """harness.training.run.run for one configuration -> tokens/s after the first step, step-1 loss."""
    from harness.training.config import TrainConfig, TrainSettings
    from harness.training.run import run

    node, targets = CONFIGS[label]
    out = tempfile.mkdtemp(prefix="train-overhead-")
    try:
        cfg = TrainConfig(
            model=MODEL, data=DATA, quantizer={**node, "compute_dtype": "float32"},
            adapter={"name": "lora", "rank": RANK, "alpha": ALPHA, "targets": targets},
            train=TrainSettings(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=LR,
                                eval_tokens=args.eval_tokens, seed=args.seed, progress=False),
            module="bitsandbytes" if node["name"] != "none" else "auto",
            device="cpu", compute_dtype="float32", merge=False, output_dir=out,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # run()'s progress lines
            metrics = run(cfg)
        with open(Path(out) / "loss.csv") as f:
            rows = list(csv.DictReader(f))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    tokens = args.batch_size * args.seq_len
    first = tokens / float(rows[0]["tokens_per_second"])
    return {"tokens_per_second": tokens * (args.steps - 1) / (metrics["train_seconds"] - first),
            "reported": metrics["train_tokens_per_second"], "loss_first": float(rows[0]["loss"])}


def bare_loop(label: str, args, reuse: bool = False) -> dict:
    """The same training written directly against transformers + PEFT + bitsandbytes (reuse: inside the
    allocator setting harness train uses)."""
    import peft

    from harness.config import quantizer_config
    from harness.data.corpus import data_config, load_corpus
    from harness.data.tokens import pack, tokenize
    from harness.measure import reuse_freed_memory
    from harness.models.quantize import quantize_model
    from harness.models.sources import load_model, model_config

    node, targets = CONFIGS[label]
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(model_config(MODEL))
    if node["name"] != "none":  # fp32: loaded in fp32 already, nothing to do
        quantize_model(model, quantizer_config({**node, "compute_dtype": "float32"}), module="bitsandbytes")
    torch.manual_seed(args.seed)
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
        target_modules="all-linear" if targets == ["all-linear"] else targets))
    blocks = pack(tokenize(load_corpus(data_config(DATA)).train, tokenizer), args.seq_len)
    order = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(args.seed))
    batches = [blocks[order[i * args.batch_size:(i + 1) * args.batch_size]] for i in range(args.steps)]
    with reuse_freed_memory("cpu") if reuse else contextlib.nullcontext():
        return _bare_steps(model, batches, args)


def _bare_steps(model, batches, args) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()

    def step(ids):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    first = step(batches[0]).item()  # warm-up, not timed
    start = time.perf_counter()
    for ids in batches[1:]:
        step(ids)
    seconds = time.perf_counter() - start
    return {"tokens_per_second": args.batch_size * args.seq_len * (args.steps - 1) / seconds, "loss_first": first}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                        help=f"any of {list(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per loop, the first one untimed")
    parser.add_argument("--repeats", type=int, default=1, help="harness/bare pairs per configuration")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=256, help="train.eval_tokens of the harness run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-quiet", type=float, default=120.0, metavar="SECONDS",
                        help="before each loop, wait (at most this long over the whole run) until other "
                             "processes use under a quarter of a core (default 120; 0: never wait)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is the warm-up")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    started, budget = time.perf_counter(), [args.wait_quiet]
    print(f"# {MODEL['name']}, LoRA r={RANK}, fp32 on the CPU ({torch.get_num_threads()} threads), batch "
          f"{args.batch_size} x {args.seq_len}, {args.steps} steps per loop (first untimed); load averages at "
          f"start: {load_averages()}", flush=True)
    loops = {"harness": harness_loop, "bare": bare_loop, "bare+reuse": lambda *a: bare_loop(*a, reuse=True)}
    results = {label: {side: [] for side in [*loops, "other"]} for label in args.configs}
    # The first training loop of a process runs ~15% slower than the ones after it, whichever side it is
    # (thread pools, kernel and allocator caches warm up: measured 167-171 against 190-210 tokens/s), and
    # leaving out each loop's first step does not cover it. A short untimed loop takes that cost for both sides.
    with contextlib.redirect_stdout(io.StringIO()):
        bare_loop(args.configs[0], argparse.Namespace(**{**vars(args), "steps": 2}))
    for r in range(args.repeats):
        for i, label in enumerate(args.configs):
            shift = (i + r) % len(loops)
            order = [*loops][shift:] + [*loops][:shift]
            for side in order:
                ForeignLoad.wait_quiet(budget)
                with ForeignLoad() as load:
                    res = loops[side](label, args)
                results[label][side].append(res)
                results[label]["other"].append(load.cores)
                print(f"#   {label} {side}: {res['tokens_per_second']:.1f} tok/s after the warm-up step"
                      + (f" (run() reports {res['reported']:.1f} over all steps)" if "reported" in res else "")
                      + f"; step-1 loss {res['loss_first']:.6f}; other processes {load.cores:.2f} cores",
                      flush=True)

    print(f"# load averages at end: {load_averages()}; total {time.perf_counter() - started:.0f} s, "
          f"{args.wait_quiet - max(budget[0], 0):.0f} s of it waiting for other processes; `other`: cores other "
          "processes kept busy during the loops (mean; above ~0.1 the figures are not trustworthy)\n")
    print("| configuration | harness tok/s | bare tok/s | bare+reuse tok/s | harness / bare | harness / bare+reuse "
          "| step-1 loss harness / bare | other |\n|---|---:|---:|---:|---:|---:|---|---:|")
    for label in args.configs:
        res = results[label]
        h, b, br = (statistics.median(x["tokens_per_second"] for x in res[side]) for side in loops)
        losses = f"{res['harness'][0]['loss_first']:.6f} / {res['bare'][0]['loss_first']:.6f}"
        print(f"| {label} | {h:.1f} | {b:.1f} | {br:.1f} | {h / b:.3f} | {h / br:.3f} | {losses} "
              f"| {statistics.fmean(res['other']):.2f} |")


if __name__ == "__main__":
    main()
