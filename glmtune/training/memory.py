"""Fitting a training step into GPU memory: the micro-batch, and how many layers recompute.

Activation checkpointing saves memory by recomputing each decoder layer's forward in the backward
pass. On a large GPU it mostly costs time: with every layer checkpointed, a 6B QLoRA step took 2.7x
as long as without on an H100 and 2.0x on an H200 (bench/RESULTS.md). Activation memory grows with the tokens of a
micro-batch, and length-grouped micro-batches differ several-fold in tokens, so one setting for the
whole run is either unsafe for the longest batch or slow for all the others. So we decide per
micro-batch: two probes on the longest rows measure activation bytes per token with every layer
checkpointed and with none, and each micro-batch then checkpoints the fewest layers that fit.
Checkpointing recomputes exactly (dropout included), so the plan changes speed and memory, never
the numbers.

The budget is the free memory the driver reports, less the optimizer's state (allocated at the
first step, after the probes) and a margin for the allocator's fragmentation. Should a micro-batch
still run out of memory, the trainer redoes it exactly (gradients and random state as before it),
with more layers checkpointed, or, when all already are, split in halves: the effective batch, and
so the numbers, stay the same.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from ..core import device
from .loss import chunked_loss

MARGIN = 0.1  # of the free memory, for fragmentation: blocks the allocator holds but cannot hand out
MIN_MARGIN = 256 * 2**20


def decoder_layers(model) -> list[GradientCheckpointingLayer]:
    """The layers that activation checkpointing can recompute (peft wrappers included)."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpoint_layers(layers: list[GradientCheckpointingLayer], count: int) -> None:
    """Checkpoint the first `count` of `decoder_layers(model)` and keep the others' activations.
    Needs `activation_checkpointing_enable()` once before, which installs the recompute function.
    Compiled layers (`compiling.compile_decoder_layers`) run their compiled code only when not
    checkpointed: inductor cannot partition a checkpoint traced inside a layer (torch 2.11)."""
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < count
        compiled = getattr(layer, "compiled_call", None)
        if compiled is not None:
            layer._compiled_call_impl = None if layer.gradient_checkpointing else compiled


@dataclass
class CheckpointPlan:
    """Activation bytes of a micro-batch with k of L layers checkpointed, modelled as linear in
    tokens and in k: tokens * (per_token_none - k / L * (per_token_none - per_token_full))."""

    layers: int
    budget_bytes: float  # what activations may take on top of the resting allocation
    per_token_full: float  # every layer checkpointed
    per_token_none: float  # no layer checkpointed
    used: Counter = field(default_factory=Counter)  # checkpointed layers -> micro-batches run so

    def bytes_for(self, tokens: int, count: int) -> float:
        """Estimated activation bytes of `tokens` with `count` layers checkpointed."""
        return tokens * (self.per_token_none - count / self.layers * (self.per_token_none - self.per_token_full))

    def after_out_of_memory(self, tokens: int, count: int) -> int:
        """A micro-batch of `tokens` ran out of memory with `count` layers checkpointed, so the
        budget was too generous: lower it below that batch's estimate, so that it, and every batch
        like it from now on, checkpoints more. Returns the batch's new count."""
        self.budget_bytes = min(self.budget_bytes, 0.9 * self.bytes_for(tokens, count))
        return self.layers_for(tokens)

    def layers_for(self, tokens: int) -> int:
        """The fewest checkpointed layers whose activations for `tokens` fit in the budget."""
        excess = tokens * self.per_token_none - self.budget_bytes
        if excess <= 0:
            return 0
        saved_per_layer = tokens * (self.per_token_none - self.per_token_full) / self.layers
        needed = excess / saved_per_layer if saved_per_layer > 0 else math.inf
        # not-less-than also catches NaN: an unmeasured (infinite) cost means checkpoint everything
        return self.layers if not needed < self.layers else math.ceil(needed)

    def apply(self, layers: list[GradientCheckpointingLayer], tokens: int) -> int:
        """Set the checkpointing of `layers` (the model's `decoder_layers`) for one micro-batch."""
        count = self.layers_for(tokens)
        checkpoint_layers(layers, count)
        self.used[count] += 1
        return count

    def summary(self) -> dict:
        return {"layers": self.layers, "budget_gib": self.budget_bytes / 2**30,
                "per_token_mib": {"all_checkpointed": self.per_token_full / 2**20,
                                  "none_checkpointed": self.per_token_none / 2**20},
                "checkpointed_layers_per_micro_batch": {str(k): v for k, v in sorted(self.used.items())}}


def _probe(model, batch: dict) -> float | None:
    """Peak bytes above the resting allocation for one forward+backward, or None if it ran out."""
    batch = {k: v.to(model.device) for k, v in batch.items()}
    torch.cuda.empty_cache()
    resting = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        with device.autocast(), chunked_loss(model):
            model(**batch).loss.backward()
        return torch.cuda.max_memory_allocated() - resting
    except torch.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        del batch
        torch.cuda.empty_cache()


def _budget(model) -> float:
    """What one micro-batch's activations and gradients may take (the probes measure exactly those)."""
    free = device.free_memory()
    optimizer = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)  # AdamW
    return free - optimizer - max(MIN_MARGIN, MARGIN * free)


def _longest_first(dataset) -> list[int]:
    lengths = dataset["length"]  # one column read; dataset[i] would decode every column of each row
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def fit_micro_batch(model, dataset, collator, effective_batch: int) -> int:
    """The largest micro-batch (a divisor of the effective batch) whose forward+backward on the
    LONGEST rows fits, with the model's checkpointing as it is set. Length grouping makes such
    batches real, so a size that fits here never runs out of memory later."""
    if not device.cuda():
        return effective_batch
    candidates = [b for b in (64, 32, 16, 8, 4, 2, 1) if b <= effective_batch and effective_batch % b == 0]
    order = _longest_first(dataset)
    was_training = model.training
    model.train()
    try:
        for size in candidates:
            peak = _probe(model, collator([dataset[i] for i in order[:size]]))
            if peak is not None and peak < _budget(model):
                return size
        return 1
    finally:
        model.train(was_training)


def plan_checkpointing(model, dataset, collator, micro_batch: int) -> CheckpointPlan | None:
    """Measure activation memory per token with all and with no layers checkpointed, on the
    longest rows, and return the per-micro-batch plan (None without a GPU: nothing to fit)."""
    if not device.cuda():
        return None
    layers = decoder_layers(model)
    rows = [dataset[i] for i in _longest_first(dataset)[:micro_batch]]
    was_training = model.training
    model.train()
    try:
        checkpoint_layers(layers, len(layers))
        batch = collator(rows)
        full = _probe(model, batch)
        if full is None:  # even full checkpointing does not fit: nothing left to plan
            return CheckpointPlan(len(layers), 0.0, math.inf, math.inf)
        per_token_full = full / batch["input_ids"].numel()
        per_token_none = math.inf
        checkpoint_layers(layers, 0)
        while rows:  # fewer rows until one probe without checkpointing fits
            batch = collator(rows)
            peak = _probe(model, batch)
            if peak is not None:
                per_token_none = max(peak / batch["input_ids"].numel(), per_token_full)
                break
            rows = rows[: len(rows) // 2]
        return CheckpointPlan(len(layers), _budget(model), per_token_full, per_token_none)
    finally:
        checkpoint_layers(layers, len(layers))
        model.train(was_training)


def uses_checkpointing(setting: str) -> bool:
    """Whether the model needs activation checkpointing installed: 'on', or 'auto' on a GPU."""
    return setting == "on" or (setting == "auto" and device.cuda())


def fit_memory(model, dataset, collator, batch_size: str, grad_accum: int,
               checkpointing: str) -> tuple[int, int, CheckpointPlan | None]:
    """Micro-batch, accumulation and checkpoint plan; the effective batch stays as asked
    (`batch_size` x `grad_accum`, with 'auto' counting as 1)."""
    effective = (1 if batch_size == "auto" else int(batch_size)) * grad_accum
    micro = fit_micro_batch(model, dataset, collator, effective) if batch_size == "auto" else int(batch_size)
    plan = plan_checkpointing(model, dataset, collator, micro) if checkpointing == "auto" else None
    return micro, effective // micro, plan


def describe(checkpointing: str, plan: CheckpointPlan | None) -> str:
    if plan is not None:
        without = ("no micro-batch of the longest rows fits without" if math.isinf(plan.per_token_none)
                   else f"{plan.per_token_none / 2**20:.2f} MiB/token without")
        return (f"auto per micro-batch ({without}, {plan.per_token_full / 2**20:.2f} with all {plan.layers} layers; "
                f"{plan.budget_bytes / 2**30:.1f} GiB for activations)")
    return "on (every layer)" if uses_checkpointing(checkpointing) else "off"


class GradientSnapshot:
    """The gradients accumulated before a micro-batch, so that one which runs out of memory halfway
    through its backward pass (some gradients already added to) can be redone without counting it
    twice. Held in CPU memory (pinned); nothing is copied for the first micro-batch of an optimizer
    step, which starts from no gradients, so runs without accumulation (large GPUs) never copy. The
    others pay one device-to-host copy of the LoRA gradients per micro-batch (0.12 GiB at r=16),
    small beside the arithmetic-bound step of a card small enough to accumulate."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.copies: list[torch.Tensor] | None = None
        self.held = [False] * len(self.params)

    def take(self) -> None:
        self.held = [p.grad is not None for p in self.params]
        if not any(self.held):
            return
        if self.copies is None:
            self.copies = [torch.empty(p.shape, dtype=p.dtype, pin_memory=p.is_cuda) for p in self.params]
        pairs = [(c, p.grad) for c, p, held in zip(self.copies, self.params, self.held) if held]
        torch._foreach_copy_([c for c, _ in pairs], [g for _, g in pairs], non_blocking=True)

    def restore(self) -> None:
        for i, p in enumerate(self.params):
            if self.held[i]:
                p.grad.copy_(self.copies[i], non_blocking=True)
            else:
                p.grad = None


def split_rows(batch: dict, rows: int) -> list[dict]:
    """A micro-batch as parts of at most `rows` rows, each cut to its own longest row (rounded up
    as the collator pads)."""
    from ..model.prompts import padded_width

    parts = []
    for start in range(0, len(batch["input_ids"]), rows):
        part = {k: v[start:start + rows] for k, v in batch.items()}
        width = min(padded_width(int(part["attention_mask"].sum(1).max())), part["input_ids"].shape[1])
        parts.append({k: v[:, :width] for k, v in part.items()})
    return parts


def strictest(plans: list[CheckpointPlan | None]) -> CheckpointPlan | None:
    """One plan that fits every process's GPU: the smallest budget and the largest costs that any
    of them measured (each measured its own; a GPU shared with another job has less room)."""
    if len(plans) == 1 or plans[0] is None:
        return plans[0]
    return CheckpointPlan(plans[0].layers, min(p.budget_bytes for p in plans),
                          max(p.per_token_full for p in plans), max(p.per_token_none for p in plans))
