"""The training loop, deliberately plain (what a researcher would write by hand, so the harness adds no overhead):
causal-LM loss on packed blocks of the train split, AdamW (bitsandbytes' paged AdamW on CUDA), gradient
accumulation, linear warm-up then a cosine, linear or constant learning rate, gradient clipping, optional
gradient checkpointing. Seeding covers the weights of the adapter, the data order and dropout, so the same
seed gives the same losses on the CPU bit for bit.
"""

from __future__ import annotations

import math
import time

import torch

from harness.measure import memory_now
from harness.training.config import TrainSettings, resolve_optimizer
from harness.training.plan import Plan
from quantizers.storage import tensor_bytes


def make_optimizer(params, s: TrainSettings, device: torch.device):
    name = resolve_optimizer(s.optimizer, device)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    import bitsandbytes.optim as bnb_optim

    cls = {"paged_adamw_32bit": bnb_optim.PagedAdamW32bit, "paged_adamw_8bit": bnb_optim.PagedAdamW8bit,
           "adamw_8bit": bnb_optim.AdamW8bit}[name]
    return cls(params, lr=s.lr, weight_decay=s.weight_decay)


def lr_factor(step: int, s: TrainSettings) -> float:
    """Linear warm-up over warmup_ratio of the steps, then train.scheduler: cosine or linear decay to 0, or
    constant (step counts from 0; the first step after the warm-up runs at the full lr)."""
    warmup = math.ceil(s.warmup_ratio * s.steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, s.steps - warmup)
    if s.scheduler == "constant":
        return 1.0
    if s.scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1 + math.cos(math.pi * progress))


def batches(blocks: torch.Tensor, batch_size: int, seed: int):
    """Endless micro-batches (batch_size, seq_len) of the packed blocks, reshuffled every epoch (seeded)."""
    if blocks.shape[0] < batch_size:
        raise ValueError(f"the train split packs into {blocks.shape[0]} blocks, fewer than train.batch_size="
                         f"{batch_size}; lower train.seq_len or train.batch_size, or use a larger corpus")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(blocks.shape[0], generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield blocks[order[i:i + batch_size]]


def fine_tune(model, blocks: torch.Tensor, p: Plan, memory: dict | None = None) -> list[dict]:
    """Train the adapter in place -> one row per optimizer step (step, loss, lr, tokens_per_second, memory_bytes,
    memory_reserved_bytes: memory_now() after the step, as PEFT's method comparison logs it).
    memory: if given, receives the bytes of the gradients and of the optimizer state (read once, at step 0)."""
    s = p.train
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = make_optimizer(params, s, p.device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, s))
    data = batches(blocks, s.batch_size, s.seed)
    torch.manual_seed(s.seed)  # dropout
    model.train()
    rows = []
    bar = _progress(s)
    for step in range(s.steps):
        start = time.perf_counter()
        loss_sum = 0.0
        for _ in range(s.grad_accum):
            ids = next(data).to(p.device)
            loss = model(input_ids=ids, labels=ids).loss / s.grad_accum
            loss.backward()
            loss_sum += loss.item()
            # drop the graph's last reference now, not when the next forward reassigns `loss`: kept alive
            # through the next forward, steps on the CPU ran ~10% slower (more fresh pages faulted in)
            del loss
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"the loss became {loss_sum} at step {step}; lower train.lr")
        if s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if memory is not None and step == 0:  # sizes are fixed after the first step; reading them costs ~nothing
            memory["gradients"] = tensor_bytes(q.grad for q in params if q.grad is not None)
            memory["optimizer"] = tensor_bytes(v for st in optimizer.state.values() for v in st.values()
                                               if isinstance(v, torch.Tensor))
        p.adapter.on_step(model, step)  # AdaLoRA reads this step's gradients: before zero_grad
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
        rate = s.tokens_per_step / (time.perf_counter() - start)
        used, reserved = memory_now(p.device)
        rows.append({"step": step, "loss": loss_sum, "lr": lr, "tokens_per_second": rate, "memory_bytes": used,
                     "memory_reserved_bytes": reserved})
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
            bar.update()
    if bar is not None:
        bar.close()
    model.eval()
    return rows


def _progress(s: TrainSettings):
    if not s.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=s.steps, desc="train", unit="step", dynamic_ncols=True)
