"""What calibrating a quantizer costs on the embedded model: seconds and peak memory of GPTQ (or AWQ) over its
decoder layers with `samples` x `seq_len` calibration tokens, beside one plain fp32 forward of the same tokens
(the floor: the sequential pass runs each layer on them twice, once to collect and once with quantized weights).

    python benchmarks/calibration_cost.py                       # GPTQ 4-bit g64, 128 x 512 (issue 18's bar: 5 min)
    python benchmarks/calibration_cost.py --quantizer awq --bits 3

Prints one line per figure; the layer-by-layer progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from harness.config import quantizer_config
from harness.data.calibration import calibration_batches
from harness.data.corpus import DataConfig
from harness.measure import PeakMemory
from harness.models.quantize import quantize_model
from harness.models.sources import ModelConfig, load_model
from quantizers.storage import model_storage_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantizer", default="gptq", choices=["gptq", "awq"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--skip-forward", action="store_true", help="do not time the plain forward")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(ModelConfig())
    model.float().eval()
    qcfg = quantizer_config({"name": args.quantizer, "bits": args.bits, "group_size": args.group_size,
                             "compute_dtype": "float32",
                             "calibration": {"samples": args.samples, "seq_len": args.seq_len}})
    batches = calibration_batches(DataConfig(), tokenizer, qcfg.calibration)
    print(f"model: {model_storage_bytes(model) / 2**20:.1f} MiB fp32; calibration: {args.samples} x {args.seq_len} "
          f"tokens in {len(batches)} batches; threads {torch.get_num_threads()}")
    if not args.skip_forward:
        start = time.perf_counter()
        with torch.no_grad():
            for ids in batches:
                model(ids, use_cache=False)
        print(f"plain fp32 forward of the calibration tokens: {time.perf_counter() - start:.1f} s")
    with PeakMemory(torch.device("cpu")) as peak:
        report = quantize_model(model, qcfg, module="harness", calibration=batches)
    hidden = model.config.hidden_size
    inputs = 2 * args.samples * args.seq_len * hidden * 4  # one layer's inputs and its outputs, fp32
    hessians = 4 * 4 * (3 * hidden**2 + model.config.intermediate_size**2)  # four per layer, fp32, and a copy each
    print(f"resident before {peak.start_bytes / 2**20:.0f} MiB (the model, the calibration ids, the libraries); "
          f"growth {(peak.bytes - peak.start_bytes) / 2**20:.0f} MiB against one layer's inputs + outputs "
          f"{inputs / 2**20:.0f} MiB + Hessians {hessians / 2**20:.0f} MiB")
    errors = [(r.output_error, r.rtn_output_error) for r in report.layers]
    print(f"{args.quantizer} {args.bits}-bit g{args.group_size}: quantize_seconds {report.quantize_seconds:.1f} s, "
          f"peak resident {peak.bytes / 2**20:.0f} MiB (calibration_peak_bytes {report.calibration_peak_bytes / 2**20:.0f} MiB)")
    print(f"layers {len(errors)}; beating round-to-nearest on output error: {sum(e < r for e, r in errors)}; "
          f"mean output error {sum(e for e, _ in errors) / len(errors):.4f} vs RTN {sum(r for _, r in errors) / len(errors):.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
