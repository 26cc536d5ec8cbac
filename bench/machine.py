"""One line describing the CPU a benchmark ran on, for the header of its results.

The same code runs 3x faster in int8 on a CPU with AMX than on one with AVX-512 alone (seen
on two machines of the same "2-core" kind), so results without the CPU are not comparable.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Instruction-set extensions that decide the speed of the int8 and float32 kernels.
KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def describe_cpu() -> str:
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    have = [f for f in KEY_FLAGS if f in flags] or ["none of " + "/".join(KEY_FLAGS)]
    try:
        import torch

        capability = f"; torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    except ImportError:
        capability = ""
    cap = f"; {isa_cap()}" if isa_cap() else ""
    return f"{name}, {os.cpu_count()} CPUs; {' '.join(have)}{capability}{cap}"


def isa_cap() -> str:
    """The oneDNN cap when one is set (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA),
    e.g. to emulate a CPU without AMX on one that has it: the flags above are then the CPU's,
    not what the int8 and float32 kernels used. Empty when no cap is set."""
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if value := os.environ.get(variable, "").strip():
            amx = "AMX" in value.upper() or value.upper() in ("ALL", "DEFAULT")
            withheld = "" if amx else " (AMX withheld)"
            return f"oneDNN capped with {variable}={value}{withheld}"
    return ""


if __name__ == "__main__":
    print(describe_cpu())
