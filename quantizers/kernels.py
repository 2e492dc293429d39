"""A compiled CPU kernel for the reference dequantizer: unpack, look up, subtract, scale and cast in one pass.

The eager torch path makes five or six passes over a weight-sized buffer (unpack, gather, pad, multiply,
cast); on a CPU that is memory- and allocation-bound, so fusing them is what makes the reference as
fast as bitsandbytes. The kernel is a page of C, built with the system C compiler the first time a
weight is dequantized (well under a second, once per process) and called through ctypes. It runs on up
to torch.get_num_threads() OpenMP threads of the pool torch itself uses (one for weights under 1M elements).
Where the CPU has AVX-512 the 4-bit lookups are register shuffles, and with AVX2 those into fp32;
elsewhere plain C loops give the same bits.

It does the same fp32 operations in the same order as the eager path, so the two agree bit for bit:
    out[i] = cast((table[code(i)] - zero[i // group]) * scale[i // group] + offset)
(-ffp-contract=off keeps the compiler from fusing a multiply and an add into one rounding.)
torch.compile was tried first: inductor turns the table lookup into scalar loops (1-2 GB/s on a 4096x4096
nf4 weight, about ten seconds of compilation per output dtype), several times slower than this kernel.

HARNESS_DEQUANT=eager turns the kernel off; without a C compiler it turns itself off, with one warning.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings

import torch

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static inline float as_f32(float x) { return x; }

/* fp32 -> bf16, round to nearest even: what torch's conversion does. */
static inline uint16_t as_bf16(float x) {
    uint32_t u; memcpy(&u, &x, 4);
    uint16_t rounded = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0 : rounded;  /* NaN stays a (quiet) NaN */
}

/* fp32 -> fp16, round to nearest even with subnormals: fp16_ieee_from_fp32_value from the FP16
   library, the routine c10::Half uses. Plain float arithmetic, so the compiler can vectorize it. */
static inline uint16_t as_f16(float x) {
    float base = ((x < 0 ? -x : x) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w; memcpy(&w, &x, 4);
    uint32_t shl1_w = w + w, sign = w & 0x80000000u, bias = shl1_w & 0xff000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    uint32_t bias_bits = (bias >> 1) + 0x07800000u;
    float bias_f; memcpy(&bias_f, &bias_bits, 4);
    base = bias_f + base;
    uint32_t b; memcpy(&b, &base, 4);
    uint32_t nonsign = ((b >> 13) & 0x00007c00u) + (b & 0x00000fffu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

/* A group's 16 possible results: lut[k] = cast((table[k] - z) * s + offset). */
#define LUT_LOOP(NAME, OUT_T, CAST)                                                                  \
static inline void NAME(const float *table, float z, float s, float offset, OUT_T *lut) {             \
    for (int k = 0; k < 16; k++) lut[k] = CAST((table[k] - z) * s + offset);                           \
}
LUT_LOOP(lut_f32, float, as_f32)
LUT_LOOP(lut_bf16, uint16_t, as_bf16)
LUT_LOOP(lut_f16, uint16_t, as_f16)

/* The 4-bit inner loop as table shuffles, where the CPU has them: the 16 results sit in one register
   and a permute looks up 16 or 32 codes at once. Each returns how many bytes it did; the plain loop
   after it does the rest (all of them on other CPUs). Bytes widen so that one lane holds the high
   nibble and the next the low one, which is the output order. */
#define NO_SHUFFLE(p, pairs, lut, o) 0
#if defined(__AVX512F__)
static inline int64_t shuffle_f32(const uint8_t *p, int64_t pairs, const float *lut, float *o) {
    const __m512 table = _mm512_loadu_ps(lut);
    const __m512i low = _mm512_set1_epi64(15);
    int64_t j = 0;
    for (; j + 8 <= pairs; j += 8) {
        __m512i b = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(p + j)));
        __m512i idx = _mm512_or_si512(_mm512_srli_epi64(b, 4), _mm512_slli_epi64(_mm512_and_si512(b, low), 32));
        _mm512_storeu_ps(o + 2 * j, _mm512_permutexvar_ps(idx, table));
    }
    return j;
}
#define SHUFFLE_F32 shuffle_f32
#elif defined(__AVX2__)
/* AVX2 (most x86 CPUs without AVX-512): a permute reads 8 entries, so the 16 results sit in two
   registers, both are looked up and bit 3 of the code picks one. 8 bytes (16 results) an iteration: each
   byte is doubled, widened to 32 bits, and shifted by 4 or 0 so the high nibble lands first. */
static inline int64_t shuffle_f32(const uint8_t *p, int64_t pairs, const float *lut, float *o) {
    const __m256 lo = _mm256_loadu_ps(lut), hi = _mm256_loadu_ps(lut + 8);
    const __m256i shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0), low = _mm256_set1_epi32(15);
    const __m128i twice = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    int64_t j = 0;
    for (; j + 8 <= pairs; j += 8) {
        __m128i b = _mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)(p + j)), twice);
        __m256i i0 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), shifts), low);
        __m256i i1 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(b, b)), shifts), low);
        __m256 v0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, i0), _mm256_permutevar8x32_ps(hi, i0),
                                     _mm256_castsi256_ps(_mm256_slli_epi32(i0, 28)));
        __m256 v1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, i1), _mm256_permutevar8x32_ps(hi, i1),
                                     _mm256_castsi256_ps(_mm256_slli_epi32(i1, 28)));
        _mm256_storeu_ps(o + 2 * j, v0);
        _mm256_storeu_ps(o + 2 * j + 8, v1);
    }
    return j;
}
#define SHUFFLE_F32 shuffle_f32
/* lut_f32's 16 results computed as two vectors (the same sub, mul, add per value, so the same bits) and
   stored whole: scalar stores would stall the vector loads that read them back (see below). */
static inline void lut_f32_avx2(const float *table, float z, float s, float offset, float *lut) {
    const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), voff = _mm256_set1_ps(offset);
    _mm256_storeu_ps(lut, _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(table), vz), vs), voff));
    _mm256_storeu_ps(lut + 8, _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(table + 8), vz), vs), voff));
}
#define LUT_F32_AVX2 lut_f32_avx2
#else
#define SHUFFLE_F32 NO_SHUFFLE
#endif
#if defined(__AVX512BW__)
static inline int64_t shuffle_u16(const uint8_t *p, int64_t pairs, const uint16_t *lut, uint16_t *o) {
    const __m512i table = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lut));
    const __m512i low = _mm512_set1_epi32(15);
    int64_t j = 0;
    for (; j + 16 <= pairs; j += 16) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + j)));
        __m512i idx = _mm512_or_si512(_mm512_srli_epi32(b, 4), _mm512_slli_epi32(_mm512_and_si512(b, low), 16));
        _mm512_storeu_si512(o + 2 * j, _mm512_permutexvar_epi16(idx, table));
    }
    return j;
}
#define SHUFFLE_U16 shuffle_u16
/* The same 16 results as lut_f32 / lut_bf16 / lut_f16, computed in one register: written by scalar
   stores, the table would stall the vector load that reads it back for longer than a 64-element
   group's lookups take. bf16 rounds as as_bf16 does; vcvtps2ph rounds to nearest even like as_f16. */
static inline __m512 lut_values(const float *table, float z, float s, float offset) {
    __m512 v = _mm512_sub_ps(_mm512_loadu_ps(table), _mm512_set1_ps(z));
    return _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(s)), _mm512_set1_ps(offset));
}
static inline void lut_bf16_avx512(const float *table, float z, float s, float offset, uint16_t *lut) {
    __m512 v = lut_values(table, z, s, offset);
    __m512i u = _mm512_castps_si512(v);
    __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256((__m256i *)lut, _mm512_cvtepi32_epi16(r));
}
static inline void lut_f32_avx512(const float *table, float z, float s, float offset, float *lut) {
    _mm512_storeu_ps(lut, lut_values(table, z, s, offset));
}
static inline void lut_f16_avx512(const float *table, float z, float s, float offset, uint16_t *lut) {
    __m512 v = lut_values(table, z, s, offset);
    _mm256_storeu_si256((__m256i *)lut, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#define LUT_F32 lut_f32_avx512
#define LUT_BF16 lut_bf16_avx512
#define LUT_F16 lut_f16_avx512
#else
#define SHUFFLE_U16 NO_SHUFFLE
#if defined(LUT_F32_AVX2)
#define LUT_F32 LUT_F32_AVX2
#else
#define LUT_F32 lut_f32
#endif
#define LUT_BF16 lut_bf16
#define LUT_F16 lut_f16
#endif

/* All n elements of the flat weight, groups shared among `threads` OpenMP threads (torch's own
   runtime: a process loads libgomp.so.1 once, so this library uses the pool torch.set_num_threads
   sizes, and its threads do not spin against torch's). `group` is even for 4 bits, so every group
   starts on a whole byte. 4-bit codes: two per byte, high nibble first. 8-bit codes: one per byte.
   zero == NULL means no zero point; subtracting 0.0f and adding -0.0f leave every float unchanged
   (-0.0 included), so the loops need no branches. */
#define DEQUANT(NAME, OUT_T, CAST, LUT, SHUFFLE)                                                     \
void NAME(const uint8_t *restrict q, int bits, const float *restrict table, const float *restrict scale, \
          const float *restrict zero, float offset, int64_t group, OUT_T *restrict out, int64_t n,       \
          int threads) {                                                                               \
    const int64_t groups = (n + group - 1) / group;                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")                  \
    for (int64_t g = 0; g < groups; g++) {                                                             \
        const int64_t g0 = g * group, len = n - g0 < group ? n - g0 : group;                           \
        const float s = scale[g], z = zero ? zero[g] : 0.0f;                                           \
        OUT_T *restrict o = out + g0;                                                                  \
        if (bits == 4) {  /* the 16 results this group can produce, then pure lookups */               \
            OUT_T lut[16];                                                                             \
            LUT(table, z, s, offset, lut);                                                             \
            const uint8_t *restrict p = q + g0 / 2;                                                    \
            const int64_t pairs = len / 2;                                                             \
            for (int64_t j = SHUFFLE(p, pairs, lut, o); j < pairs; j++) {                              \
                o[2 * j] = lut[p[j] >> 4];                                                             \
                o[2 * j + 1] = lut[p[j] & 15];                                                         \
            }                                                                                          \
            if (len & 1) o[len - 1] = lut[p[pairs] >> 4];                                              \
        } else {                                                                                       \
            const uint8_t *restrict p = q + g0;                                                        \
            for (int64_t j = 0; j < len; j++) o[j] = CAST((table[p[j]] - z) * s + offset);             \
        }                                                                                              \
    }                                                                                                  \
}
DEQUANT(dequant_f32, float, as_f32, LUT_F32, SHUFFLE_F32)
DEQUANT(dequant_bf16, uint16_t, as_bf16, LUT_BF16, SHUFFLE_U16)
DEQUANT(dequant_f16, uint16_t, as_f16, LUT_F16, SHUFFLE_U16)

/* Ask for transparent huge pages on a fresh output buffer before it is first written: a 64 MB weight
   otherwise takes 16384 page faults, which cost as much as the dequantization itself. */
void advise_huge_pages(void *p, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, e = ((uintptr_t)p + nbytes) & ~(uintptr_t)4095;
    if (e > a) madvise((void *)a, e - a, MADV_HUGEPAGE);
#endif
}
"""

_FUNCTIONS = {torch.float32: "dequant_f32", torch.bfloat16: "dequant_bf16", torch.float16: "dequant_f16"}
_FLAGS = ["-O3", "-ffp-contract=off", "-fPIC", "-shared"]
# tried in turn until one builds and loads: the library is built on the machine that runs it, so it may
# use all of its instructions; the later ones are for compilers without OpenMP or without the flag
_ARCH_FLAGS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])
# below this many elements per thread, fewer threads: waking one costs more than it saves. 1 << 19 (2 MB of
# fp32 output, ~0.1 ms on one core) keeps small models' layers (SmolLM2's are 0.1-0.9 M elements) on the
# calling thread: an OpenMP region needs every thread of its team on a core at once, and where another
# process holds a core (2-core machines, shared runners) a 2-thread region there measured ~8 ms whatever
# its size, against 0.05-0.6 ms of work, 20x the single-thread time (benchmarks/layer_cost.py).
_PER_THREAD_MIN = 1 << 19
_HUGE_PAGES_MIN = 4 << 20  # bytes; a buffer smaller than two huge pages gains nothing

_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded library, or None once building it failed


def enabled() -> bool:
    """Whether the kernel is wanted: HARNESS_DEQUANT=eager turns it off."""
    mode = os.environ.get("HARNESS_DEQUANT", "auto")
    if mode not in ("auto", "eager"):
        raise ValueError(f"HARNESS_DEQUANT={mode!r} is not accepted; use 'auto' (compiled kernel) or 'eager'")
    return mode == "auto"


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, built on first use; None where no C compiler can build it."""
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _build()
            except (OSError, RuntimeError) as err:  # no compiler, or none that builds it: eager still works
                _state["lib"] = None
                warnings.warn(f"dequantization kernel unavailable, using the eager torch path: {err}", stacklevel=3)
        return _state["lib"]


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    cc = shlex.split(cc)  # CC may carry a wrapper or flags, e.g. "ccache gcc"
    errors = []
    with tempfile.TemporaryDirectory(prefix="quant-kernels-") as tmp:
        src = os.path.join(tmp, "dequant.c")
        with open(src, "w") as f:
            f.write(_SOURCE)
        for i, arch in enumerate(_ARCH_FLAGS):
            lib = os.path.join(tmp, f"dequant{i}.so")
            done = subprocess.run([*cc, *_FLAGS, *arch, src, "-o", lib], check=False, capture_output=True, text=True)
            if done.returncode:
                errors.append(done.stderr.strip()[-300:])
                continue
            try:  # the mapping outlives the file, which the directory's removal deletes
                handle = ctypes.CDLL(lib)
                break
            except OSError as err:  # e.g. an OpenMP runtime older than the compiler's
                errors.append(str(err))
        else:
            raise RuntimeError(f"{' '.join(cc)} could not build it: {errors[-1]}")
    for name in _FUNCTIONS.values():
        getattr(handle, name).argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_float, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
        ]
        getattr(handle, name).restype = None
    handle.advise_huge_pages.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    handle.advise_huge_pages.restype = None
    return handle


def dequantize(
    qdata: torch.Tensor,
    bits: int,
    table: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    offset: torch.Tensor | None,
    group: int,
    n: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """(n,) tensor of `dtype`: (table[code] - zero[i // group]) * scale[i // group] + offset, in fp32 then cast.

    qdata: (ceil(n/2),) uint8 packed 4-bit codes (high nibble first) or (n,) 8-bit codes (uint8 or int8,
    read as bytes); table: (2**bits,) fp32 value of each code; scale, zero: (ceil(n/group),) fp32;
    offset: scalar or None. Returns None where the kernel does not apply (not on the CPU, another
    bit width or dtype, an odd 4-bit group, no compiler, HARNESS_DEQUANT=eager): use the eager path.
    """
    if not (qdata.device.type == "cpu" and bits in (4, 8) and dtype in _FUNCTIONS and n > 0 and enabled()):
        return None
    if (bits == 4 and group % 2) or table.numel() != 2**bits:
        return None
    groups = -(-n // group)
    expected = {"qdata": (qdata, -(-n * bits // 8)), "scale": (scale, groups)}
    if zero is not None:
        expected["zero"] = (zero, groups)
    for name, (t, size) in expected.items():  # the kernel trusts these sizes: check them here
        if t.numel() != size:
            raise ValueError(f"{name} holds {t.numel()} values; {n} elements in groups of {group} need {size}")
    lib = library()
    if lib is None:
        return None
    q = _flat(qdata)
    q = q if q.dtype == torch.uint8 else q.view(torch.uint8)
    table, scale = _flat(table, torch.float32), _flat(scale, torch.float32)
    zero = _flat(zero, torch.float32) if zero is not None else None
    off = float(offset) if offset is not None else -0.0  # -0.0: adding it changes nothing
    out = torch.empty(n, dtype=dtype)
    if n * out.element_size() >= _HUGE_PAGES_MIN:
        lib.advise_huge_pages(out.data_ptr(), n * out.element_size())
    threads = max(1, min(torch.get_num_threads(), n // _PER_THREAD_MIN))
    getattr(lib, _FUNCTIONS[dtype])(
        q.data_ptr(), bits, table.data_ptr(), scale.data_ptr(), zero.data_ptr() if zero is not None else None,
        off, group, out.data_ptr(), n, threads,
    )
    return out


def _flat(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """t as a contiguous 1-D tensor of `dtype` (default: its own), calling torch only where something changes:
    this runs for every layer of every forward, where no-op casts and reshapes cost more than the kernel."""
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if t.dim() != 1:
        t = t.reshape(-1)
    return t if t.is_contiguous() else t.contiguous()
