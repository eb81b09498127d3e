"""Batched generation and reference perplexity for one model, timed honestly.

`inference.Sides` hands each side's model in; this module only decodes and measures.
"""

from __future__ import annotations

import math
import time
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm
from transformers import CompileConfig
from transformers.generation.streamers import BaseStreamer

from ..core import device, distributed
from ..model.prompts import IGNORE_INDEX, Encoded, PadCollator
from ..model.tokenizer import stop_token_ids


@dataclass
class Generated:
    text: str
    new_tokens: int
    latency_s: float  # from the start of its generate() call until this answer was complete
    ttft_s: float  # time to first token: the batch's prefill, shared by the answers of one batch
    stopped: bool  # ended by a stop token, not cut off at max_new_tokens


class StepClock(BaseStreamer):
    """The moment each decoding step's tokens exist: generate() hands every step's tokens to its
    streamer (first the prompt), copying them to the CPU, which waits for the GPU."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@dataclass
class Decoding:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.8
    seed: int = 42
    cache_len: int | None = None  # a static KV cache of this many positions; None: the growing cache
    compiled: bool = False  # compile the decoding step (static cache only)

    def sampling(self) -> dict:
        """generate()'s sampling arguments; greedy overrides the model's own sampling defaults."""
        if self.do_sample:
            return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None)

    def cache_options(self) -> dict:
        if self.cache_len is None:
            return {}
        compiling = {"compile_config": CompileConfig()} if self.compiled else {"disable_compile": True}
        return {"cache_implementation": "static", "max_cache_len": self.cache_len, **compiling}


def cast_adapters(model, dtype: torch.dtype) -> None:
    """LoRA weights to the base's compute dtype, for inference only. peft loads adapters in fp32, so
    with a bf16/fp16 base every LoRA call casts its input up and its output back: two extra kernels
    per adapted layer per decoded token. No optimizer needs fp32 master weights at inference."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.lora_A.to(dtype)
            module.lora_B.to(dtype)


def warm_up(model, tokenizer, prompts: list[list[int]], decoding: Decoding, batch_size: int) -> float:
    """A four-token generate over the first batch, with the real batch shape and cache; returns its
    seconds. The first CUDA generate pays one-off costs (kernel loading, library handles: 10 s on an
    H200), and a compiled one its compile and CUDA-graph recording (three decoding steps), which
    would otherwise land on whichever side runs first and in its per-token figures."""
    if not prompts:  # a process whose share of fewer prompts than processes is none
        return 0.0
    short = dataclasses.replace(decoding, max_new_tokens=4, do_sample=False)
    first = batches(list(range(len(prompts))), batch_size, equal=True)[0]
    device.synchronize()
    began = time.perf_counter()
    generate_answers(model, tokenizer, [prompts[i] for i in first], short, batch_size, desc="warm-up",
                     min_new_tokens=4)
    device.synchronize()
    return time.perf_counter() - began


def batches(order: list[int], batch_size: int, equal: bool) -> list[list[int]]:
    """`order` cut into as few batches as `batch_size` allows, of near-equal sizes; with `equal`, the
    last is topped up with repeats of its last prompt so that every batch has one shape (a compiled
    step is compiled per shape; the repeats' answers are dropped)."""
    count = -(-len(order) // batch_size) if order else 0
    size = -(-len(order) // count) if count else 0
    chunks = [order[i:i + size] for i in range(0, len(order), size)] if size else []
    if equal and chunks:
        chunks[-1] = chunks[-1] + [chunks[-1][-1]] * (size - len(chunks[-1]))
    return chunks


def generate_answers(model, tokenizer, prompts: list[list[int]], decoding: Decoding, batch_size: int,
                     desc: str = "generate", min_new_tokens: int | None = None) -> list[Generated]:
    """Answers for prompt id lists, in their order. Prompts are batched by length (less left padding)."""
    stops = stop_token_ids(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generated | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False, disable=not distributed.is_main()) as bar:
        for chunk in batches(order, batch_size, equal=decoding.compiled):
            batch = tokenizer.pad({"input_ids": [prompts[i] for i in chunk]}, padding=True, return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            torch.manual_seed(decoding.seed)  # same draws for base and fine-tuned in sampling mode
            clock = StepClock()
            device.synchronize()
            began = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=decoding.max_new_tokens, eos_token_id=stops,
                                     pad_token_id=tokenizer.pad_token_id, streamer=clock, min_new_tokens=min_new_tokens,
                                     **decoding.sampling(), **decoding.cache_options())
            device.synchronize()
            step_done = [t - began for t in clock.times[1:]]  # step_done[j]: new token j exists
            width = batch["input_ids"].shape[1]
            for row, index in enumerate(chunk):
                if results[index] is not None:  # a repeat topping up the last batch: its answer is dropped
                    continue
                new = out[row, width:].tolist()
                end = next((j for j, t in enumerate(new) if t in stops), None)
                used = len(new) if end is None else end + 1  # the stop token is generated work too
                text = tokenizer.decode(new[:end], skip_special_tokens=True).strip()
                results[index] = Generated(text, used, step_done[used - 1], step_done[0], end is not None)
            bar.update(len(set(chunk)))
    return results  # type: ignore[return-value]


def reference_perplexity(model, encoded: list[Encoded], pad_id: int, batch_size: int,
                         chunk: int = 1024) -> list[float]:
    """exp(mean token NLL) of each encoded example's labelled tokens (its reference answer and eos)
    given its prompt: `prompts.encode` rows, as training saw them. The output layer is applied to
    the labelled positions only, `chunk` at a time, so the full-vocabulary logits (65,024 values a
    position) never exist for a whole batch at once."""
    collator = PadCollator(pad_id)
    rows = [vars(row) for row in encoded]
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # adapters stay in place
    values: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start:start + batch_size])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = core.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            labels = batch["labels"][:, 1:]
            scored = labels != IGNORE_INDEX
            vectors, targets = hidden[:, :-1][scored], labels[scored]
            nll = torch.cat([F.cross_entropy(core.lm_head(vectors[i:i + chunk]).float(), targets[i:i + chunk],
                                             reduction="none") for i in range(0, len(targets), chunk)])
            sums = torch.zeros(len(labels), device=nll.device).index_add_(0, scored.nonzero()[:, 0], nll)
        values += [math.exp(v) for v in (sums / scored.sum(-1).clamp(min=1)).tolist()]
    return values
