"""Inference and training cost of the quantized layers relative to the full-precision model, on the CPU.

    .venv/bin/python benchmarks/layer_cost.py                       # all four layer kinds, ~6-7 min on 2 cores
    .venv/bin/python benchmarks/layer_cost.py --configs fp harness-nf4 --repeats 5
    .venv/bin/python benchmarks/layer_cost.py --parts eval --eval-tokens 1024

One process builds every configuration of the default model (SmolLM2-135M, fp32 compute):
  fp                fp32 nn.Linear everywhere (quantizer none)
  harness-nf4       nf4 in the harness' QuantLinear (module=harness: compiled dequantization kernel + F.linear)
  bnb-nf4           nf4 in bitsandbytes' Linear4bit (module=bitsandbytes)
  harness-nf4-dq    nf4 + double quantization in QuantLinear
(every nn.Linear but lm_head is quantized, as `harness train` does), then measures, interleaved:
  eval   tokens/s of harness.evaluation.perplexity.perplexity on --eval-tokens test tokens with windows of --context
         (no_grad, eval mode: what `harness eval` and the before/after evaluations of a run cost);
  train  tokens/s of one LoRA step (r=--rank on --targets; forward with labels, backward, AdamW step,
         zero_grad) on a --batch-size x --seq-len batch of the train split, the same batch for every
         configuration in a round.
Each part first runs one untimed warm-up per configuration (an eval window / a train step: builds the kernel,
grows the allocator, creates the optimizer state), then --repeats rounds; each round visits every
configuration once, starting one further along the list each time, so drift and ordering hit all alike.
The table gives medians (and the min-max spread) of tokens/s and of each round's ratio to full precision
(a ratio within one round compares runs seconds apart, so slow drift of the machine cancels).

Wall-clock figures: anything else running on the machine lowers them, and on a 2-core machine a competing
process makes every OpenMP region (torch's matmuls included) wait for a core, so the load averages are
printed before and after; rerun when they are above ~0.5 or the spreads are wide.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch

CONFIGS = {  # label -> (quantizer node, module)
    "fp": ({"name": "none"}, "harness"),
    "harness-nf4": ({"name": "nf4"}, "harness"),
    "bnb-nf4": ({"name": "nf4"}, "bitsandbytes"),
    "harness-nf4-dq": ({"name": "nf4", "double_quant": True}, "harness"),
}


def build(label: str, model_name: str, compute_dtype: str):
    """(model in eval mode, tokenizer) for one configuration: loaded, quantized, cast."""
    from harness.config import quantizer_config
    from harness.models.quantize import quantize_model
    from harness.models.sources import load_model, model_config

    node, module = CONFIGS[label]
    model, tokenizer = load_model(model_config({"name": model_name}))
    quantize_model(model, quantizer_config({**node, "compute_dtype": compute_dtype}), module=module)
    return model.eval(), tokenizer


def attach_lora(model, rank: int, targets: list[str], seed: int):
    """PEFT LoRA on `model` (seeded) and its AdamW optimizer."""
    import peft

    torch.manual_seed(seed)
    target = "all-linear" if targets == ["all-linear"] else targets
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                            target_modules=target))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return peft_model, torch.optim.AdamW(params, lr=1e-4)


def train_step(model, optimizer, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def rotations(labels: list[str], repeats: int):
    """Round r visits every label, starting at label r mod len(labels)."""
    for r in range(repeats):
        k = r % len(labels)
        yield r, labels[k:] + labels[:k]


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def load_averages() -> str:
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "?"


class ForeignLoad:
    """CPU time other processes use, from /proc (Linux): the machine's busy jiffies minus this process's.

    with ForeignLoad() as load: ...  then load.cores: the average number of cores other processes kept busy
    over the block (nan where /proc cannot be read). wait_quiet() blocks until they leave the machine alone.
    """

    _HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def jiffies() -> tuple[int, int] | None:
        """(busy jiffies of the whole machine, jiffies of this process), or None off Linux."""
        try:
            with open("/proc/stat") as f:
                cpu = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            return None
        busy = sum(cpu[:8]) - cpu[3] - cpu[4]  # user..steal minus idle and iowait
        return busy, int(fields[11]) + int(fields[12])  # utime + stime, all threads

    def __enter__(self) -> ForeignLoad:
        self.start, self.t0, self.cores = self.jiffies(), time.perf_counter(), float("nan")
        return self

    def __exit__(self, *exc) -> None:
        end, seconds = self.jiffies(), time.perf_counter() - self.t0
        if self.start is not None and end is not None and seconds > 0:
            foreign = (end[0] - self.start[0]) - (end[1] - self.start[1])
            self.cores = max(0.0, foreign / self._HZ / seconds)

    @classmethod
    def wait_quiet(cls, budget: list[float], below: float = 0.25, settle: float = 1.0) -> None:
        """Sleep until other processes used less than `below` cores over `settle` seconds, or until the
        seconds left in budget[0] (shared by every call, decremented in place) run out."""
        while budget[0] > 0:
            start = time.perf_counter()
            with cls() as load:
                time.sleep(settle)
            budget[0] -= time.perf_counter() - start
            if not load.cores >= below:  # quiet, or nothing to read
                return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                        help=f"which of {list(CONFIGS)} (fp is always added: the ratios need it)")
    parser.add_argument("--parts", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per part (default 5)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="float32 on CPUs without native bf16 (emulated bf16 is many times slower)")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="test-split tokens scored per eval")
    parser.add_argument("--context", type=int, default=1024, help="perplexity window (stride = window)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"],
                        help="LoRA target modules, or all-linear")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-quiet", type=float, default=120.0, metavar="SECONDS",
                        help="before each timed measurement, wait (at most this long over the whole run) until "
                             "other processes use under a quarter of a core (default 120; 0: never wait)")
    args = parser.parse_args(argv)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its harmless CPU import warning
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # the "loading weights" bar of every load
    from harness.data.corpus import data_config, load_corpus
    from harness.data.tokens import pack, tokenize
    from harness.evaluation.perplexity import perplexity, prefix_token_id

    labels = ["fp"] + [c for c in args.configs if c != "fp"]
    started = time.perf_counter()
    print(f"# {args.model}, compute {args.compute_dtype}, {torch.get_num_threads()} CPU threads, torch "
          f"{torch.__version__}; load averages at start: {load_averages()}", flush=True)
    models = {}
    for label in labels:
        t = time.perf_counter()
        models[label], tokenizer = build(label, args.model, args.compute_dtype)
        print(f"#   built {label} in {time.perf_counter() - t:.1f} s", flush=True)
    corpus = load_corpus(data_config({"name": "janeausten"}))
    prefix = prefix_token_id(tokenizer)
    results: dict[str, dict[str, list[float]]] = {label: {"eval": [], "train": []} for label in labels}
    foreign: dict[str, dict[str, list[float]]] = {label: {"eval": [], "train": []} for label in labels}
    budget = [args.wait_quiet]

    def timed(label: str, part: str, fn) -> None:
        """Wait for a quiet machine, run fn() -> tokens/s, record it and the other processes' load."""
        ForeignLoad.wait_quiet(budget)
        with ForeignLoad() as load:
            results[label][part].append(fn())
        foreign[label][part].append(load.cores)

    if "eval" in args.parts:
        ids = tokenize(corpus.test, tokenizer)[: args.eval_tokens]
        print(f"# eval: {ids.numel()} test tokens, windows of {args.context}; warm-up: one window each", flush=True)
        for label in labels:
            perplexity(models[label], ids[: min(args.context, ids.numel())], args.context, prefix_token=prefix)
        for r, order in rotations(labels, args.repeats):
            for label in order:
                timed(label, "eval",
                      lambda m=models[label]: perplexity(m, ids, args.context, prefix_token=prefix).tokens_per_second)
            print(f"#   round {r}: " + ", ".join(f"{k} {results[k]['eval'][-1]:.1f}" for k in labels) + " tok/s; "
                  "other processes: " + " ".join(f"{foreign[k]['eval'][-1]:.2f}" for k in labels), flush=True)

    if "train" in args.parts:
        blocks = pack(tokenize(corpus.train, tokenizer), args.seq_len)
        order = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(args.seed))
        batch = lambda i: blocks[order[i * args.batch_size:(i + 1) * args.batch_size]]  # noqa: E731
        tokens = args.batch_size * args.seq_len
        print(f"# train: LoRA r={args.rank} on {args.targets}, batch {args.batch_size} x {args.seq_len}; "
              "warm-up: one step each", flush=True)
        optimizers = {}
        for label in labels:
            models[label], optimizers[label] = attach_lora(models[label], args.rank, args.targets, args.seed)
            models[label].train()
            train_step(models[label], optimizers[label], batch(0))
        for r, order_r in rotations(labels, args.repeats):
            for label in order_r:
                def step(m=models[label], opt=optimizers[label], ids=batch(r + 1)) -> float:
                    start = time.perf_counter()
                    train_step(m, opt, ids)
                    return tokens / (time.perf_counter() - start)

                timed(label, "train", step)
            print(f"#   round {r}: " + ", ".join(f"{k} {results[k]['train'][-1]:.1f}" for k in labels) + " tok/s; "
                  "other processes: " + " ".join(f"{foreign[k]['train'][-1]:.2f}" for k in labels), flush=True)

    print(f"# load averages at end: {load_averages()}; total {time.perf_counter() - started:.0f} s, "
          f"{args.wait_quiet - max(budget[0], 0):.0f} s of it waiting for other processes; tok/s: median "
          f"(min-max) of {args.repeats} interleaved rounds; vs fp: median (min-max) of the per-round ratios to "
          "fp; `other`: cores other processes kept busy during the timed runs (mean; above ~0.1 the figures "
          "are not trustworthy)\n")
    parts = [p for p in ("eval", "train") if p in args.parts]
    head = "| layers |" + "".join(f" {p} tok/s | {p} vs fp | other |" for p in parts)
    print(head + "\n|---|" + "---:|---:|---:|" * len(parts))
    for label in labels:
        cells = []
        for p in parts:
            med, lo, hi = summary(results[label][p])
            ratio, rlo, rhi = summary([a / b for a, b in zip(results[label][p], results["fp"][p])])
            cells.append(f" {med:.1f} ({lo:.1f}-{hi:.1f}) | {ratio:.3f} ({rlo:.2f}-{rhi:.2f}) | "
                         f"{statistics.fmean(foreign[label][p]):.2f} |")
        print(f"| {label} |" + "".join(cells))


if __name__ == "__main__":
    main()
