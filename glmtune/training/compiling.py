"""torch.compile for training: the decoder layers compiled one by one, whether that pays, and what
compiling cost (also kept for the comparison's compiled decoding).

Training a 6B QLoRA model on a large GPU is bound by kernel launches, not arithmetic: a micro-batch
launches ~8,700 kernels and the GPU idles ~40% of the step. Compiling fuses the LoRA, norm and
activation kernels. Only the decoder layer is compiled ("regional compilation"): the 28 layers share
its code, so one compile serves all of them, at a fraction of the whole model's compile time.
A layer that activation checkpointing recomputes runs eagerly: transformers checkpoints inside the
layer's forward, and inductor fails on a checkpoint traced there (torch 2.11, "Node ... was invalid,
but is output"). On a large GPU the checkpoint plan recomputes no layer and every layer runs
compiled; on a small one the recomputed layers, whose step is bound by arithmetic rather than by
launches, gain least from compiling anyway.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..core import device
from ..core.files import cache_root, write_atomic

BACKEND = "inductor"

# Training on an H200, 6B NF4 + LoRA r=16 on all projections, real medical rows (bench/RESULTS.md,
# 2026-12-02): eager 7,800-8,300 real tokens/s, compiled 11,700-12,500; compiling took 39-43 s.
EAGER_TOK_S, COMPILED_TOK_S = 8_000.0, 12_000.0
COLD_TRAIN_COMPILE_S = 45.0


@dataclass
class CompilePlan:
    on: bool
    reason: str
    key: str  # what a measured compile time is recorded under


def plan_training_compile(choice: str, tokens: float, model_name: str, on_gpu: bool,
                          checkpointing: str = "auto") -> CompilePlan:
    """Compile the decoder layers or not, for a run that trains on about `tokens` tokens. 'auto'
    compiles on a GPU when the estimated saving exceeds the compile's estimated cost (what it took
    here before, torch caching compiled code, else a first compile); never on CPU, where the compile
    alone outlasts a demo run."""
    key = f"train|{device.name()}|{model_name}"
    if choice == "off":
        return CompilePlan(False, "eager (--compile off)", key)
    if checkpointing == "on":
        return CompilePlan(False, f"eager ({'--compile on ignored: ' if choice == 'on' else ''}with "
                                  "--gradient-checkpointing on every layer is recomputed, and recomputed layers run "
                                  "eagerly)", key)
    if choice == "on":
        return CompilePlan(True, "compiled (--compile on)", key)
    if not on_gpu:
        return CompilePlan(False, "eager (auto: compiling pays on a GPU only)", key)
    saving = tokens / EAGER_TOK_S - tokens / COMPILED_TOK_S
    return weigh(saving, key, COLD_TRAIN_COMPILE_S, f"{tokens / 1e6:.2f}M tokens would train ~{saving:.0f} s faster")


def weigh(saving: float, key: str, cold_cost: float, gain: str) -> CompilePlan:
    """'auto': compile when the estimated `saving` (seconds, said as `gain`) exceeds the compile's
    cost, which is what it took on this machine before under `key` (torch caches compiled code),
    else `cold_cost`, a first compile's."""
    measured = compile_costs().get(key)
    cost = measured if measured is not None else cold_cost
    source = "measured here before" if measured is not None else "a first compile"
    verdict = "compiled" if saving > cost else "eager"
    return CompilePlan(saving > cost, f"{verdict} (auto: {gain}, {source} costs ~{cost:.0f} s)", key)


def compile_decoder_layers(model) -> None:
    """Compile each decoder layer (peft wrappers included), to run compiled whenever it is not
    checkpointed (`memory.checkpoint_layers` switches between the two)."""
    import torch

    from .memory import checkpoint_layers, decoder_layers

    layers = decoder_layers(model)
    for layer in layers:
        layer.compiled_call = torch.compile(layer._call_impl, backend=BACKEND)  # what nn.Module.compile does
    checkpoint_layers(layers, sum(layer.gradient_checkpointing for layer in layers))


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far (forward and backward graphs), as torch's
    compiler counts them."""
    from torch._dynamo.utils import calculate_time_spent

    return float(calculate_time_spent().get("total_wall_time", 0.0))


def _costs_file() -> Path:
    return cache_root() / "compile_costs.json"


def compile_costs() -> dict[str, float]:
    try:
        costs = json.loads(_costs_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: estimate as for a first compile
        return {}
    return costs if isinstance(costs, dict) else {}


def record_compile_cost(key: str, seconds: float) -> None:
    """Remember what a compile took here, for the next 'auto' decision. Best effort: a cache that
    cannot be written only makes the next estimate the first-compile one."""
    costs = compile_costs() | {key: round(seconds, 1)}
    with contextlib.suppress(OSError):
        _costs_file().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_costs_file(), json.dumps(costs, indent=1) + "\n")
