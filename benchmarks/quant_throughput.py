"""Quantize and dequantize throughput of every format, reference vs bitsandbytes, in GB/s of the original
fp32 tensor (numel * 4 bytes / median seconds), on the GPU when there is one, else on the CPU.

    .venv/bin/python benchmarks/quant_throughput.py                 # 4096x4096, all formats
    .venv/bin/python benchmarks/quant_throughput.py --formats nf4 --dtypes bf16 --repeats 21

Backends: `reference` is the pure-torch reference with its compiled CPU kernel (quantizers.kernels),
`reference-eager` the same with HARNESS_DEQUANT=eager, `bitsandbytes` its own kernels where it has them
(called directly: quantizers/bnb.py sends CPU dequantization to the reference, see there).
Timings are wall clock: other work on the machine lowers them, so rerun when figures look noisy.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import statistics
import time

import torch

from harness.registry import QUANTIZERS
from quantizers import bnb, kernels

# label -> (registry name, config fields, whether bitsandbytes has a kernel for it)
FORMATS = {
    "nf4": ("nf4", {}, True),
    "fp4": ("fp4", {}, True),
    "nf4+dq": ("nf4", {"double_quant": True}, True),
    "fp4+dq": ("fp4", {"double_quant": True}, True),
    "int4": ("int4", {}, False),
    "int8 row": ("int8", {"granularity": "row"}, True),  # bitsandbytes quantizes; dequantizing is the reference
    "intk4 g32": ("intk", {"bits": 4, "group_size": 32}, False),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fresh_outputs() -> None:
    """Have glibc map every tensor over 1 MB afresh, as it always does over 32 MB: otherwise a result
    sometimes lands in memory a freed one already faulted in, skips its page faults and times 3x faster,
    which says something about the allocator, not the kernel. Not glibc (or not Linux): no change."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # -3 is M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() after `warmup` calls, synchronizing the GPU around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bnb_dequantize(qt, dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' own 4-bit kernel, whatever quantizers.bnb.dequantize would route it to."""
    return bnb._functional().dequantize_4bit(qt.qdata.view(-1, 1), quant_state=bnb.quant_state(qt, dtype))


def dequantize_with(qt, dtype: torch.dtype, eager: bool):
    """The reference dequantizer with its compiled kernel off (eager) or on (HARNESS_DEQUANT)."""
    old = os.environ.get("HARNESS_DEQUANT")
    os.environ["HARNESS_DEQUANT"] = "eager" if eager else "auto"
    try:
        return qt.dequantize(dtype)
    finally:
        if old is None:
            del os.environ["HARNESS_DEQUANT"]
        else:
            os.environ["HARNESS_DEQUANT"] = old


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 4096), metavar=("ROWS", "COLS"))
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS), metavar="FORMAT")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=9, help="timed dequantize calls (a third as many quantize)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its harmless CPU import warning
    fresh_outputs()

    device = torch.device(args.device)
    w = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)).to(device)
    gigabytes = w.numel() * 4 / 1e9
    print(f"# {args.shape[0]}x{args.shape[1]} fp32 on {device} ({torch.get_num_threads()} CPU threads), "
          f"torch {torch.__version__}, median of {args.repeats}")
    if device.type == "cpu":
        start = time.perf_counter()
        built = kernels.library() is not None
        print(f"# dequantization kernel: {'built in %.2f s' % (time.perf_counter() - start) if built else 'unavailable'}")
    print("| format | backend | op | dtype | GB/s |\n|---|---|---|---|---:|")

    def row(label, backend, op, dtype, fn, *fn_args):
        # quantizing is 10-100x slower than dequantizing: fewer calls keep the run to minutes
        repeats, warmup = (max(3, args.repeats // 3), 1) if op == "quantize" else (args.repeats, 2)
        gbps = gigabytes / seconds(lambda: fn(*fn_args), device, repeats, warmup)
        print(f"| {label} | {backend} | {op} | {dtype} | {gbps:.2f} |", flush=True)

    for label in args.formats:
        name, fields, has_bnb = FORMATS[label]
        backends = ["reference"] + (["bitsandbytes"] if has_bnb and bnb.supports(device) else [])
        for backend in backends:
            quantizer = QUANTIZERS.get(name)(backend=backend, **fields).build()
            row(label, backend, "quantize", "-", quantizer.quantize, w)
            qt = quantizer.quantize(w)
            if backend == "bitsandbytes" and qt.backend != "bitsandbytes":
                continue  # it has no dequantize kernel for this format: the reference does it
            for d in args.dtypes:
                if backend == "bitsandbytes":
                    row(label, backend, "dequantize", d, bnb_dequantize, qt, DTYPES[d])
                    continue
                if device.type == "cpu":
                    row(label, "reference-eager", "dequantize", d, dequantize_with, qt, DTYPES[d], True)
                row(label, backend, "dequantize", d, dequantize_with, qt, DTYPES[d], False)

if __name__ == "__main__":
    main()
