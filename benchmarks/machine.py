"""What a benchmark ran on, named in every report: the CPU model and the vector ISA torch used.

The ISA matters: evaluation and training are matmul-bound, and the same 2-core budget behaves
differently on AVX-512 and AVX2-only CPUs (issue: the demo on an AVX2-only AMD EPYC). A run with
`ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2` restricts torch, MKL and
oneDNN to AVX2 on an AVX-512 machine, and the description says so.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

ISA_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name for it elsewhere)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def cpu_description() -> str:
    """e.g. 'Intel(R) Xeon(R) Processor, 2 cores, torch CPU capability AVX2 (restricted by ATEN_CPU_CAPABILITY=avx2, ...)'."""
    import torch

    restricted = [f"{name}={os.environ[name]}" for name in ISA_ENV if os.environ.get(name)]
    isa = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu_name()}, {os.cpu_count()} cores, torch CPU capability {isa}"
            + (f" (restricted by {', '.join(restricted)})" if restricted else ""))
