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
from ..training.compiling import CompilePlan, weigh
from ..core.errors import ConfigError

GiB = 2**30
MARGIN = 1 * GiB  # on a GPU: CUDA context growth, cuBLAS workspaces, CUDA-graph pools, allocator fragmentation
CPU_MARGIN = GiB // 4  # on CPU none of those: the allocator's arenas and temporaries outside `row_bytes`
MIN_ROWS = 8  # the 16-bit path is chosen only if it leaves room for at least this many prompts per batch
PERPLEXITY_ROWS = 16  # most rows per perplexity forward (its full-vocabulary logits dominate its memory)
EXAM_TOKENS = 32768  # most tokens per knowledge-check forward: past a few thousand a forward is compute-bound
NF4_BYTES = 0.53  # per quantized parameter: 4 bits, plus block scales after double quantisation
CACHE_ROUNDING = 64  # static-cache lengths rounded up, so reruns reuse a compiled shape

# Decoding costs on an H200, 6B bf16, static cache (bench/RESULTS.md, 2026-12-02): an eager step is
# launch-bound (~36 ms whatever the batch); a compiled step with CUDA graphs is 6 ms at batch 1, 10 ms
# at 27, 18 ms at 100; the first compile of a batch shape took 37 s (batch 1), 39 s (27), 62 s (100),
# and 6-9 s when torch's compile cache already held it.
EAGER_STEP_S = 0.036
COMPILED_STEP_S, COMPILED_STEP_PER_ROW_S = 0.006, 0.0001
COLD_COMPILE_S, COLD_COMPILE_PER_ROW_S = 37.0, 0.25


@dataclass(frozen=True)
class Shape:
    """The sizes that decide memory, from the base's config (ChatGLM3 or native)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> "Shape":
        return cls(config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_attention_heads, config.num_key_value_heads, config.head_dim)

    @classmethod
    def of_model(cls, base: str) -> "Shape":
        """The sizes of a base model from its config alone (nothing is downloaded but the config)."""
        from ..model.loading import read_config
        from ..model.sources import resolve_model_dir

        return cls.of(read_config(resolve_model_dir(base, weights=False)))

    def linear_params(self) -> int:
        """Parameters of the decoder layers' projections: what NF4 quantizes."""
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    def weight_bytes(self, quantized: bool, element: int) -> float:
        """Resident weights: embeddings and output matrix stay in 16-bit under NF4 too."""
        matrices = 2 * self.vocab * self.hidden * element
        return matrices + self.linear_params() * (NF4_BYTES if quantized else element)

    def token_bytes(self, element: int) -> float:
        """A forward's widest transient per token: the MLP's gate/up output and its activation."""
        return (3 * self.intermediate + 4 * self.hidden) * element

    def row_bytes(self, prompt: int, cache: int, element: int) -> float:
        """One prompt of a generation batch: its static KV cache, and the prefill's widest transient."""
        kv = cache * self.layers * 2 * self.kv_heads * self.head_dim * element
        return kv + prompt * self.token_bytes(element)

    def perplexity_row_bytes(self, length: int, element: int) -> float:
        """One sequence of a perplexity forward: full-vocabulary logits, their fp32 copy and the
        cross-entropy's log-probabilities."""
        return length * self.vocab * (element + 8)


def gib(size: float) -> str:
    return f"{size / GiB:.1f} GiB" if size >= GiB / 10 else f"{size / 2**20:.0f} MiB"


@dataclass
class WeightsPlan:
    merged: bool  # 16-bit weights with the adapter merged after the base side; else NF4 and unmerged
    precision: str  # bf16 / fp16 / fp32
    batch_size: int  # prompts per generate() call
    perplexity_batch: int
    reason: str
    exam_tokens: int = EXAM_TOKENS  # tokens per knowledge-check forward (questions batched by length)

    @property
    def quantization(self) -> str | None:
        return None if self.merged else "nf4"

    def describe(self) -> str:
        held = f"{self.precision}, adapter merged after the base side" if self.merged else "NF4, adapter unmerged"
        prompts = "prompt" if self.batch_size == 1 else "prompts"
        return f"{held}; {self.batch_size} {prompts} per batch ({self.reason})"


def plan_weights(choice: str, trained: str, shape: Shape, free: float, prompts: int, prompt_width: int,
                 cache_len: int, batch_size: int, on_gpu: bool, scored_len: int = 0) -> WeightsPlan:
    """How to hold the weights for `prompts` prompts (the longest `prompt_width` tokens, a static
    cache of `cache_len`; the longest perplexity sequence `scored_len`), given `free` bytes.
    choice: the --quantization flag (auto, as-trained, nf4, none); trained: the run's own.
    A plan slower than asked (NF4 by auto, fewer prompts per batch than --batch-size) says why in
    its reason, which the console prints before any answer: the two paths can be 20x apart."""
    precision = device.resolve_precision()
    element = 2 if on_gpu else 4
    margin = MARGIN if on_gpu else CPU_MARGIN
    row = shape.row_bytes(prompt_width, cache_len, element)
    ppl_row = shape.perplexity_row_bytes(scored_len, element)
    wanted = min(batch_size, max(prompts, 1))

    def plan(merged: bool, reason: str, least: int = 1) -> WeightsPlan:
        left = max(free - shape.weight_bytes(not merged, element) - margin, 0.0)
        rows = max(least, min(wanted, int(left // row)))
        ppl = max(1, min(PERPLEXITY_ROWS, int(left // ppl_row) if ppl_row else PERPLEXITY_ROWS))
        exam = max(1, min(EXAM_TOKENS, int(left // shape.token_bytes(element))))
        if rows < wanted:
            reason += (f"; room for {rows} of the {wanted} prompts per batch beside the weights, each needing "
                       f"{gib(row)} of KV cache and prefill")
        return WeightsPlan(merged, precision, rows, ppl, reason, exam)

    sixteen = f"{precision} weights {gib(shape.weight_bytes(False, element))}"
    needed = shape.weight_bytes(False, element) + margin + min(MIN_ROWS, wanted) * row
    value = choice
    if choice == "as-trained":
        choice = "nf4" if trained == "nf4" else "none"
        value = f"as-trained (the run trained on {trained})"
    flag = f"--quantization {value}"
    if choice == "nf4":
        why = "the weights the adapter was trained against" if trained == "nf4" else "a third of the memory"
        return plan(False, f"{flag}: {why}")
    if choice == "none":
        if needed > free and not on_gpu:  # asked for: the OS may page memory out; a GPU would fail outright
            return plan(True, f"{flag}: {sixteen} and a batch need {gib(needed)}, more than the {gib(free)} the "
                              "OS can give; it may swap, or stop the comparison", least=min(MIN_ROWS, wanted))
        if needed > free:
            raise ConfigError("quantization", f"{value} holds the weights in 16 bits, which with a batch of "
                                              f"{min(MIN_ROWS, wanted)} needs about {gib(needed)}, and {gib(free)} is "
                                              "free; use --quantization auto or nf4 (4-bit, a third of the memory)")
        return plan(True, f"{flag}: {sixteen}, {gib(free)} free")
    if needed <= free:
        return plan(True, f"auto: {sixteen} fit in the {gib(free)} free")
    if on_gpu:
        return plan(False, f"auto: {sixteen} and a batch need {gib(needed)}, only {gib(free)} free; NF4 needs "
                           "about a third")
    return plan(False, f"auto: {sixteen} and a batch need {gib(needed)}, more than the {gib(free)} the OS can give; "
                       "NF4 needs about a third but decodes far slower on CPU (--quantization none forces 16-bit "
                       "weights)")


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
                           device_map={"": device.gpu()} if device.cuda() else None)
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
