"""Helpers shared by the quantizers' tests: test weights (a hypothesis strategy and a fixed maker), blocks, and the
cover radius of a set of levels.

The round-trip bounds are derived from the formats. A block with absmax a is mapped to x = w / a in
[-1, 1] and x is replaced by its nearest level, so |w - w_hat| <= a * (largest distance from a point of
[-1, 1] to a level); when the levels include -1 and 1 (they do here) that is half the largest gap between
adjacent levels. Integer grids are the same with levels k / qmax. Slack terms for float rounding are
justified where they appear; eps is float32's, in which every quantizer computes.
"""

import torch
from hypothesis import strategies as st

from harness.registry import QUANTIZERS

EPS = torch.finfo(torch.float32).eps
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CODEBOOKS = ("nf4", "fp4", "fp4_e3m0", "int4")
BLOCKS = tuple(2**k for k in range(5, 13))  # 32 .. 4096, every size the configs accept


def make_weight(shape, dtype, seed, log2_scale, kind) -> torch.Tensor:
    """A finite test weight of `shape` in `dtype`, with exact zeros at every 7th position."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    if kind == "heavy":  # a few large values dominate their block, the rest fall near zero
        w = w**3
    elif kind == "uniform":
        w = torch.rand(shape, generator=gen) * 2 - 1
    elif kind == "sparse":  # whole blocks of zeros: absmax 0 must not divide by zero
        w = w * (torch.rand(shape, generator=gen) < 0.05)
    elif kind == "constant":  # every |w| equal: all of them sit exactly on the levels +-1
        w = torch.sign(w)
    w = w * 2.0**log2_scale
    w.view(-1)[::7] = 0.0
    return w.to(dtype)


@st.composite
def weights(draw, two_d=False, cols_multiple_of=1, log2_scales=None, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    if log2_scales is None:
        # fp16 tops out at 65504: heavy tails (|randn|^3 < ~200) times 2^8 stay finite; fp32 and bf16 share
        # an exponent range, so 2^+-60 exercises magnitudes far from 1 without overflowing
        log2_scales = st.integers(-14, 8) if dtype is torch.float16 else st.integers(-60, 60)
    cols = cols_multiple_of * draw(st.integers(1, max(1, 300 // cols_multiple_of)))
    if two_d or draw(st.booleans()):
        shape = (draw(st.integers(1, 24)), cols)
    else:  # 1-D and 3-D tensors too: blocks run over the flattened tensor
        shape = draw(st.sampled_from([(cols,), (2, 3, cols)]))
    kind = draw(st.sampled_from(["normal", "heavy", "uniform", "sparse", "constant"]))
    return make_weight(shape, dtype, draw(st.integers(0, 2**31 - 1)), draw(log2_scales), kind)


def in_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x: any shape -> (n_blocks, block) fp32, zero-padded like the quantizers' tail block."""
    flat = x.reshape(-1).float()
    return torch.nn.functional.pad(flat, (0, (-flat.numel()) % block)).view(-1, block)


def cover_radius(levels: torch.Tensor) -> float:
    """Largest distance from a point of [-1, 1] to its nearest level (levels sorted)."""
    return max(levels.diff().max().item() / 2, 1 - levels[-1].item(), levels[0].item() + 1)


def codebook(name, **fields):
    return QUANTIZERS.get(name)(backend="reference", **fields).build()
