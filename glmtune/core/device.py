"""The device and number formats of a run: the one place that asks CUDA what it has.

Rule: bf16 where the GPU supports it, else fp16; fp32 on CPU (bitsandbytes' and PyTorch's CPU
paths are fp32, and CPU runs are demos where exactness beats speed).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


_cpu_only = False  # --device cpu


@functools.cache
def cuda() -> bool:
    return not _cpu_only and torch.cuda.is_available()


def select(choice: str) -> None:
    """--device: cpu runs on the CPU even where a GPU is (hidden from this process's libraries too,
    when CUDA has not started yet); cuda insists on a GPU; auto takes one where there is one."""
    global _cpu_only
    if choice == "cpu":
        _cpu_only = True
        if not torch.cuda.is_initialized():
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        cuda.cache_clear()
        bf16_supported.cache_clear()
    elif choice == "cuda" and not cuda():
        from .errors import ConfigError

        raise ConfigError("device", "cuda: no CUDA GPU was found (or CUDA_VISIBLE_DEVICES hides it); use --device "
                                    "cpu (or auto)")


@functools.cache
def bf16_supported() -> bool:
    return cuda() and torch.cuda.is_bf16_supported()


def resolve_precision(choice: str = "auto") -> str:
    """'auto' -> the rule above; an explicit choice is returned as is (see `check_precision`)."""
    if choice != "auto":
        return choice
    if not cuda():
        return "fp32"
    return "bf16" if bf16_supported() else "fp16"


def check_precision(choice: str) -> str | None:
    """Why `choice` cannot run on this machine, or None when it can."""
    if choice in ("bf16", "fp16") and not cuda():
        return f"{choice} needs a CUDA GPU; use fp32 (or auto) on CPU"
    if choice == "bf16" and not bf16_supported():
        return "bf16: this GPU has no bf16; use fp16 (or auto)"
    return None


def dtype(precision: str = "auto") -> torch.dtype:
    return PRECISIONS[resolve_precision(precision)]


def autocast():
    """Mixed precision for GPU forward passes outside the Trainer (memory probes)."""
    return torch.autocast("cuda", dtype=dtype())


def gpu() -> int:
    """This process's GPU: 0, or its LOCAL_RANK under torchrun (`distributed.start` selects it)."""
    return torch.cuda.current_device()


def name() -> str:
    return torch.cuda.get_device_name(gpu()) if cuda() else "CPU"


MEMINFO = "/proc/meminfo"  # Linux's account of its RAM
CGROUP = "/sys/fs/cgroup"  # a container's memory limit (cgroup v2), which /proc/meminfo does not show
SMALL_CARD = 32 * 2**30  # below this, fragmentation can decide whether a run fits

_limit: int | None = None  # --gpu-memory, in bytes


def limit_memory(gib: float | None) -> None:
    """Let PyTorch use at most `gib` GiB of the GPU (to share a card, or to check that a recipe fits
    a smaller one), and on small cards map memory in expandable segments, which leave far less
    unusable between blocks. Call before anything is put on the GPU."""
    global _limit
    if not cuda():
        return
    total = torch.cuda.get_device_properties(gpu()).total_memory
    _limit = None if gib is None else min(int(gib * 2**30), total)
    torch.cuda.set_per_process_memory_fraction((_limit or total) / total)
    if total_memory() < SMALL_CARD and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
        # The public way is the environment variable, read once when CUDA starts; by now it has.
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")


def total_memory() -> int:
    if not cuda():
        return 0
    return _limit or torch.cuda.get_device_properties(gpu()).total_memory


def free_memory() -> int:
    """Bytes this process can hold: on a GPU, free as the driver reports them (after other processes
    and this one's CUDA context; within --gpu-memory when given); on CPU, `ram_available`."""
    if cuda():
        free = torch.cuda.mem_get_info()[0]
        return free if _limit is None else min(free, _limit - torch.cuda.memory_reserved())
    return ram_available()


def ram_available() -> int:
    """The RAM the OS can give this process: all of it less what the processes running hold and the
    kernel cannot take back without swap (anonymous and shared memory, unreclaimable kernel memory).
    Page cache and reclaimable slab count as available: the kernel gives them back on demand.

    Not MemAvailable: it is an estimate for starting one more program without any reclaim pressure,
    holding back the watermarks and up to half the page cache. Not free pages (SC_AVPHYS_PAGES) either:
    macOS, which caches all it can, shows almost none. Plans made on CPU choose between paths 20x apart
    in time (16-bit weights and whole batches, or NF4 one prompt at a time), so they read the most the
    machine can really give."""
    try:
        with open(MEMINFO, encoding="ascii") as info:
            kib = {key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in info)}
        held = kib["AnonPages"] + kib["Shmem"] + kib.get("SUnreclaim", 0)
        machine = (kib["MemTotal"] - held) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: the machine's RAM, as the best estimate there is
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(machine, container_room())


def container_room() -> float:
    """What a cgroup v2 memory limit leaves: the limit less what the container holds, its page cache
    again counted as available. Unlimited (inf) outside a container or without a limit."""
    try:
        folder = Path(CGROUP)
        limit = (folder / "memory.max").read_text(encoding="ascii").strip()
        if limit == "max":
            return float("inf")
        used = int((folder / "memory.current").read_text(encoding="ascii"))
        stat = (folder / "memory.stat").read_text(encoding="ascii").splitlines()
        cache = next((int(line.split()[1]) for line in stat if line.startswith("file ")), 0)
        return max(int(limit) - used + cache, 0)
    except (OSError, ValueError):
        return float("inf")


def allocated() -> int:
    return torch.cuda.memory_allocated() if cuda() else 0


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if cuda() else None


def empty_cache() -> None:
    if cuda():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    if cuda():
        torch.cuda.reset_peak_memory_stats()


def synchronize() -> None:
    if cuda():
        torch.cuda.synchronize()
