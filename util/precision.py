"""--precision auto: bf16 autocast where the hardware multiplies bf16 matrices natively (CUDA; AMX-BF16,
or AVX512-BF16 when a probe finds it faster), else fp32: never slower than fp32."""
from __future__ import annotations

import functools
import math
import time

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# the probe: a 1536^3 matmul, ~40 ms in fp32 on two cores; bf16 must be clearly faster to be chosen
PROBE_SIZE, PROBE_REPEATS, PROBE_SPEEDUP = 1536, 3, 1.2


def matmul_seconds(dtype: torch.dtype, size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> float:
    """The best of `repeats` timings of a [size, size] matmul in `dtype` after a warm-up."""
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
    """(True, why) when this CPU multiplies bf16 matrices faster than fp32: AMX-BF16 always; AVX512-BF16
    and Arm's BF16 when the probe says so; without them bf16 is emulated (6-8x slower)."""
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
    """--precision as ("bf16" | "fp32", why); an explicit flag is taken as asked."""
    if flag == "fp32":
        return "fp32", "asked for"
    if device.type == "cuda":
        return "bf16", "asked for" if flag == "bf16" else "auto: CUDA"
    native, why = cpu_bf16()
    if flag == "bf16":
        return "bf16", "asked for" if native else f"asked for, but slow: {why}"
    return ("bf16" if native else "fp32"), f"auto: {why}"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on `device` for "bf16" (LayerNorm, softmax and the losses stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
