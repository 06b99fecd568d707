"""Which float precision a run computes in: bf16 autocast where the hardware multiplies bf16 matrices
natively (a CUDA GPU; a CPU with AMX-BF16, or with AVX512-BF16 when a short probe finds it faster),
fp32 everywhere else, so that `--precision auto` never makes a run slower than fp32.

    precision, why = resolve_precision(flag, device)    # ("bf16", "auto: this CPU has AMX-BF16")
    print(f"precision {precision} ({why})")             # a run's first line
    with autocast(device, precision):
        logits = model(images)                          # [N, 2]
"""
from __future__ import annotations

import functools
import math
import time

import torch

PRECISIONS = ("auto", "fp32", "bf16")

# The probe: one PROBE_SIZE^3 matmul takes ~40 ms in fp32 on two cores of a current CPU, long enough
# to time and short enough not to notice (~0.3 s in all, once per process). bf16 must be clearly faster to be chosen: a draw is fp32's.
PROBE_SIZE = 1536
PROBE_REPEATS = 3
PROBE_SPEEDUP = 1.2


def matmul_seconds(dtype: torch.dtype, size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> float:
    """The best of `repeats` timings of a [size, size] @ [size, size] matmul in `dtype`, after one
    warm-up (the library's kernel choice, first-touch pages). The best, not the median: the other
    processes on the machine only ever make a timing longer."""
    generator = torch.Generator().manual_seed(0)  # the global RNG is the run's, not the probe's
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))  # [size, size]
    best = math.inf
    with torch.autocast("cpu", enabled=False):  # a probe called inside autocast still times `dtype`
        for i in range(repeats + 1):
            start = time.perf_counter()
            a @ b
            if i:
                best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bf16() -> tuple[bool, str]:
    """(True, why) when this CPU multiplies bf16 matrices faster than fp32, read from its instruction
    set: AMX-BF16 decides by itself (a tile unit, ~3x fp32's GEMM). AVX512-BF16 (AMD Zen 4/5, Intel
    Cooper Lake) and Arm's BF16 are vector instructions whose gain depends on the core and the
    library, so a probe times them. With neither, bf16 is emulated (6-8x slower than fp32 on an
    AVX2 CPU): fp32, and no probe. Decided once per process."""
    capabilities = torch.cpu.get_capabilities()
    if capabilities.get("amx_bf16"):
        return True, "this CPU has AMX-BF16"
    native = [name for name in ("avx512_bf16", "sve_bf16", "bf16") if capabilities.get(name)]
    if not native:
        return False, "this CPU has no native bf16 matrix instructions"
    speedup = matmul_seconds(torch.float32) / matmul_seconds(torch.bfloat16)
    measured = f"a bf16 matmul measured {speedup:.1f}x as fast as fp32"
    name = native[0].upper().replace("_", "-")  # AVX512-BF16, as Intel and AMD write it
    if speedup >= PROBE_SPEEDUP:
        return True, f"this CPU has {name}, {measured}"
    return False, f"this CPU has {name} but {measured}"


def resolve_precision(flag: str, device: torch.device) -> tuple[str, str]:
    """--precision's value (one of PRECISIONS) as ("bf16" | "fp32", why). auto = bf16 on CUDA and on a
    CPU with native bf16 (cpu_bf16), fp32 on any other CPU. An explicit flag is taken as asked, bf16
    on a CPU without native bf16 too, and then the reason warns that it is slow."""
    if flag == "fp32":
        return "fp32", "asked for"
    if device.type == "cuda":
        return "bf16", "asked for" if flag == "bf16" else "auto: CUDA"
    native, why = cpu_bf16()
    if flag == "bf16":
        return "bf16", "asked for" if native else f"asked for, but slow: {why}"
    return ("bf16" if native else "fp32"), f"auto: {why}"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on `device` for "bf16" (matmuls and convolutions in bf16 with fp32 accumulation,
    LayerNorm, softmax and the losses in fp32); a no-op for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
