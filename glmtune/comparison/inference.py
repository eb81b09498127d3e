"""The weights and the decoding that serve the comparison and the chat: which precision, whether the
adapter is merged, how many prompts share a batch, and whether decoding is compiled.

Two ways to hold the weights (measured on an H200, random 6B weights, bench/RESULTS.md):
- 16-bit (bf16; fp16 on GPUs without bf16; fp32 on CPU), the adapter MERGED for the fine-tuned side:
  the base side runs first on the weights as loaded, then the adapter's scaled B·A is added into the
  same tensors. The fine-tuned side then decodes at the base's speed, with no LoRA kernels per
  token, and it is the model `glmtune.export` ships. About 12 GiB for 6B.
- NF4, the adapter UNMERGED: QLoRA's training setting, the weights the adapter was trained against;
  the base side is the same model inside `disable_adapter()`. About 4 GiB for 6B, so an 8-12 GB card
  runs it, but every adapted layer adds LoRA kernels to each decoded token.
Never merged into 4-bit weights: NF4 cannot hold W + B·A, rounding it back would change the adapter.

On a card too small for NF4 as trained (a 4 GB card), the input embedding and then the output layer
stay in CPU memory, as far as needed (`model.placement`), and the batch shrinks to what is left.

Decoding uses a static KV cache (a preallocated cache also decodes ~3x faster than the growing one
in eager mode on an H200), and on CUDA may be compiled: CUDA graphs remove the per-kernel launch cost
that bounds decoding, at a one-off compile cost that `plan_compile` weighs against the work.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

from ..core import device
from ..core.errors import ConfigError, ModelLoadError
from ..model.placement import ON_DEVICE, PLACEMENTS, GiB, Placement, Shape, gib
from ..training.compiling import CompilePlan, weigh

# On a GPU: CUDA context growth, cuBLAS workspaces, CUDA-graph pools, allocator fragmentation. NF4
# decodes eagerly (no graph pools) and is the path of small cards, where 1 GiB would be a third of a
# 4 GB card whose memory is mapped in expandable segments that leave little unusable
# (device.limit_memory): there the margin is a share of the free memory, at most MARGIN.
MARGIN, NF4_MARGIN_SHARE = 1 * GiB, 0.02
CPU_MARGIN = GiB // 4  # on CPU none of those: the allocator's arenas and temporaries outside `row_bytes`
MIN_ROWS = 8  # the 16-bit path is chosen only if it leaves room for at least this many prompts per batch
PERPLEXITY_ROWS = 16  # most rows per perplexity forward
PERPLEXITY_CHUNK = 1024  # most positions whose full-vocabulary logits a perplexity forward computes at once
CHAT_CONTEXT_STEP = 256  # the chat's conversation shortened in these steps where its context does not fit
EXAM_TOKENS = 32768  # most tokens per knowledge-check forward: past a few thousand a forward is compute-bound
CACHE_ROUNDING = 64  # static-cache lengths rounded up, so reruns reuse a compiled shape

# Decoding costs on an H200, 6B bf16, static cache (bench/RESULTS.md, 2026-12-02): an eager step is
# launch-bound (~36 ms whatever the batch); a compiled step with CUDA graphs is 6 ms at batch 1, 10 ms
# at 27, 18 ms at 100; the first compile of a batch shape took 37 s (batch 1), 39 s (27), 62 s (100),
# and 6-9 s when torch's compile cache already held it.
EAGER_STEP_S = 0.036
COMPILED_STEP_S, COMPILED_STEP_PER_ROW_S = 0.006, 0.0001
COLD_COMPILE_S, COLD_COMPILE_PER_ROW_S = 37.0, 0.25


@dataclass
class WeightsPlan:
    merged: bool  # 16-bit weights with the adapter merged after the base side; else NF4 and unmerged
    precision: str  # bf16 / fp16 / fp32
    batch_size: int  # prompts per generate() call
    perplexity_batch: int
    reason: str
    exam_tokens: int = EXAM_TOKENS  # tokens per knowledge-check forward (questions batched by length)
    placement: Placement = ON_DEVICE  # the embedding and output matrices, kept in CPU memory on a small card
    perplexity_chunk: int = PERPLEXITY_CHUNK  # positions whose full-vocabulary logits are computed at once

    @property
    def quantization(self) -> str | None:
        return None if self.merged else "nf4"

    def held(self, adapter: str | None = None) -> str:
        """How the weights are held: precision, the adapter (`adapter`, else as the comparison holds
        it), and anything kept off the GPU."""
        adapter = adapter or ("adapter merged after the base side" if self.merged else "adapter unmerged")
        held = f"{self.precision if self.merged else 'NF4'}, {adapter}"
        moved = self.placement.describe()
        return f"{held}; {moved}" if moved else held

    def describe(self) -> str:
        prompts = "prompt" if self.batch_size == 1 else "prompts"
        return f"{self.held()}; {self.batch_size} {prompts} per batch ({self.reason})"


def plan_weights(choice: str, trained: str, shape: Shape, free: float, prompts: int, prompt_width: int,
                 cache_len: int, batch_size: int, on_gpu: bool, scored_len: int = 0,
                 adapter_params: int = 0) -> WeightsPlan:
    """How to hold the weights for `prompts` prompts (the longest `prompt_width` tokens, a static
    cache of `cache_len`; the longest perplexity sequence `scored_len`), given `free` bytes and an
    adapter of `adapter_params` values beside the weights.
    choice: the --quantization flag (auto, as-trained, nf4, none); trained: the run's own.
    A plan slower than asked (NF4 by auto, fewer prompts per batch than --batch-size, weights moved
    off a small card) says why in its reason, which the console prints before any answer: the two
    paths can be 20x apart. ModelLoadError, before anything loads, where not even one prompt fits."""
    precision = device.resolve_precision()
    element = 2 if on_gpu else 4
    row = shape.row_bytes(prompt_width, cache_len, element)
    ppl_row = shape.perplexity_row_bytes(scored_len, element)
    logit_bytes = shape.vocab * (element + 8)  # a position's logits, their fp32 copy and log-probabilities
    wanted = min(batch_size, max(prompts, 1))
    least = min(MIN_ROWS, wanted)

    def room(merged: bool, placement: Placement = ON_DEVICE) -> float:
        margin = (MARGIN if merged else min(MARGIN, NF4_MARGIN_SHARE * free)) if on_gpu else CPU_MARGIN
        fixed = shape.weight_bytes(not merged, element, placement) + adapter_params * element + margin
        return free - fixed - (0 if merged else shape.unpack_bytes(element))

    def plan(merged: bool, reason: str, at_least: int = 1, placement: Placement = ON_DEVICE) -> WeightsPlan:
        left = max(room(merged, placement), 0.0)
        rows = max(at_least, min(wanted, int(left // row)))
        chunk = max(1, min(PERPLEXITY_CHUNK, int(left / 2 // logit_bytes)))  # half the room at most
        rest = left - chunk * logit_bytes
        ppl = max(1, min(PERPLEXITY_ROWS, int(rest // ppl_row) if ppl_row else PERPLEXITY_ROWS))
        exam = max(1, min(EXAM_TOKENS, int(left // shape.token_bytes(element))))
        if rows < wanted:
            reason += (f"; room for {rows} of the {wanted} prompts per batch beside the weights, each needing "
                       f"{gib(row)} of KV cache and prefill")
        return WeightsPlan(merged, precision, rows, ppl, reason, exam, placement, chunk)

    def nf4(reason: str) -> WeightsPlan:
        if not on_gpu:
            return plan(False, reason)
        placement = next((p for p in PLACEMENTS if room(False, p) >= least * row), None) or \
            next((p for p in PLACEMENTS if room(False, p) >= row), None)
        if placement is None:
            smallest = free - room(False, PLACEMENTS[-1]) + row
            raise ModelLoadError(
                f"the model does not fit on this GPU: one prompt needs about {gib(smallest)} of GPU memory even in NF4 "
                f"with the input embedding and output layer in CPU memory, and {gib(free)} is free. Use "
                "--device cpu (the weights in RAM; slower), free the GPU of other processes, or a GPU with more memory")
        if placement != ON_DEVICE:
            moved = "the input embedding and output layer would leave" if placement.head_on_cpu else \
                "the input embedding would leave"
            batch = f"a batch of {least} prompts" if least > 1 else "a prompt"
            reason += f"; kept on the GPU in 16 bits, {moved} no room for {batch} in the {gib(free)} free"
        return plan(False, reason, placement=placement)

    sixteen = f"{precision} weights {gib(shape.weight_bytes(False, element))}"
    needed = free - room(True) + least * row
    value = choice
    if choice == "as-trained":
        choice = "nf4" if trained == "nf4" else "none"
        value = f"as-trained (the run trained on {trained})"
    flag = f"--quantization {value}"
    if choice == "nf4":
        why = "the weights the adapter was trained against" if trained == "nf4" else "a third of the memory"
        return nf4(f"{flag}: {why}")
    if choice == "none":
        if needed > free and not on_gpu:  # asked for: the OS may page memory out; a GPU would fail outright
            return plan(True, f"{flag}: {sixteen} and a batch need {gib(needed)}, more than the {gib(free)} the "
                              "OS can give; it may swap, or stop the comparison", at_least=least)
        if needed > free:
            raise ConfigError("quantization", f"{value} holds the weights in 16 bits, which with a batch of "
                                              f"{least} needs about {gib(needed)}, and {gib(free)} is "
                                              "free; use --quantization auto or nf4 (4-bit, a third of the memory)")
        return plan(True, f"{flag}: {sixteen}, {gib(free)} free")
    if needed <= free:
        return plan(True, f"auto: {sixteen} fit in the {gib(free)} free")
    if on_gpu:
        return nf4(f"auto: {sixteen} and a batch need {gib(needed)}, only {gib(free)} free; NF4 needs about a third")
    return plan(False, f"auto: {sixteen} and a batch need {gib(needed)}, more than the {gib(free)} the OS can give; "
                       "NF4 needs about a third but decodes far slower on CPU (--quantization none forces 16-bit "
                       "weights)")


def plan_chat(choice: str, trained: str, shape: Shape, free: float, context: int, max_new_tokens: int,
              on_gpu: bool, adapter_params: int = 0) -> tuple[WeightsPlan, int]:
    """The chat's weights and the longest conversation (its turns and the answer) that fits beside
    them: the model's context where memory allows, else less, in steps of CHAT_CONTEXT_STEP; the chat
    then drops its oldest turns sooner. ModelLoadError where not even a step beside an answer fits."""
    shortest = max_new_tokens + CHAT_CONTEXT_STEP
    steps = range(context // CHAT_CONTEXT_STEP * CHAT_CONTEXT_STEP, shortest - 1, -CHAT_CONTEXT_STEP)
    lengths = list(dict.fromkeys([context, *steps]))
    for length in lengths:
        try:
            return plan_weights(choice, trained, shape, free, 1, length - max_new_tokens, length, 1, on_gpu,
                                adapter_params=adapter_params), length
        except ModelLoadError:
            if length == lengths[-1]:
                raise


def decoding_steps(prompts: int, batch_size: int, max_new_tokens: int) -> int:
    """Decoding steps of both sides at most: each batch decodes up to max_new_tokens per side."""
    return 2 * math.ceil(prompts / batch_size) * max_new_tokens


def plan_compile(choice: str, weights: WeightsPlan, prompts: int, max_new_tokens: int, cache_len: int,
                 model_name: str, on_gpu: bool) -> CompilePlan:
    """Compile the decoding step (static shapes, CUDA graphs) or run it eagerly. 'auto' compiles when
    the steps' estimated saving exceeds the compile's estimated cost: the time this machine took for
    the same shapes before (torch caches compiled code), else the first-compile time measured above."""
    batch = weights.batch_size
    key = f"{device.name()}|{model_name}|batch {batch}|cache {cache_len}"
    if choice == "off":
        return CompilePlan(False, "eager (--compile off)", key)
    if not on_gpu:
        ignored = "--compile on ignored: " if choice == "on" else ""
        return CompilePlan(False, f"eager ({ignored}compiled decoding needs a CUDA GPU)", key)
    if not weights.merged:
        return CompilePlan(False, "eager (an unmerged adapter on NF4 weights recompiles at every step)", key)
    if choice == "on":
        return CompilePlan(True, "compiled (--compile on)", key)
    steps = decoding_steps(prompts, batch, max_new_tokens)
    saving = steps * (EAGER_STEP_S - COMPILED_STEP_S - COMPILED_STEP_PER_ROW_S * batch)
    return weigh(saving, key, COLD_COMPILE_S + COLD_COMPILE_PER_ROW_S * batch,
                 f"{steps} decoding steps would save ~{saving:.0f} s")


def cache_length(prompt_width: int, max_new_tokens: int) -> int:
    from ..model.prompts import padded_width

    return padded_width(prompt_width + max_new_tokens, CACHE_ROUNDING)


class Sides:
    """One copy of the weights serving both sides, the base side first.

    Merged: the base side uses the weights as loaded; `tuned()` then merges the adapter into them
    (for good: the base side cannot run after it). Unmerged: the base side is the model inside
    `disable_adapter()`, and the sides may run in any order, any number of times (the chat)."""

    def __init__(self, model, adapter: Path, base: str, merged: bool):
        self.model, self.adapter, self.base, self.merged = model, adapter, base, merged
        self.is_merged = False

    @classmethod
    def load(cls, base: str, adapter: Path, plan: WeightsPlan, keep_unmerged: bool = False) -> "Sides":
        """The base model with the adapter checked against it (a damaged or foreign adapter fails
        here, before any answer is generated). keep_unmerged: 16-bit weights with the adapter left
        attached, so both sides stay available (the chat)."""
        from ..model.loading import load_model
        from .generation import cast_adapters
        from ..model.lora import load_adapter

        dtype = device.dtype(plan.precision)
        model = load_model(base, quantization=plan.quantization, dtype=dtype,
                           device_map={"": device.gpu()} if device.cuda() else None, placement=plan.placement)
        model = load_adapter(model, adapter, base)
        if plan.merged and not keep_unmerged:
            model = model.unload()  # the plain base again; the adapter is merged after the base side
        else:
            cast_adapters(model, dtype)
        return cls(model.eval(), adapter, base, plan.merged and not keep_unmerged)

    @contextlib.contextmanager
    def base_side(self):
        if self.is_merged:
            raise RuntimeError("the adapter is merged into the weights: the base side runs first")
        if self.merged:
            yield self.model
        else:
            with self.model.disable_adapter():
                yield self.model

    def tuned_side(self):
        if self.merged and not self.is_merged:
            from ..model.lora import load_adapter

            self.model = load_adapter(self.model, self.adapter, self.base).merge_and_unload().eval()
            self.is_merged = True
        return self.model
