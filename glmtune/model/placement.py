"""How much memory a model's weights take, and where they go when a card is small.

ChatGLM3-6B in NF4: the 28 decoder layers take 2.7 GiB; the input embedding and the output layer
(65,024 x 4,096 each) stay 16-bit under QLoRA and take 0.5 GiB each, so a 4 GB card (about 3.3 GiB
usable) cannot hold them beside the layers. Inference then moves them to CPU memory, only as far as
memory requires (`PLACEMENTS`, in order):
1. everything on the GPU;
2. the input embedding in CPU memory: each step looks up its few rows there and sends them to the GPU
   (4,096 numbers a token). Nothing is computed differently, so the answers are the same;
3. also the output layer in CPU memory, in fp32: the step's last hidden vectors come over, their
   logits go back (65,024 numbers a row). fp32 on the CPU is at least as exact as the GPU's 16-bit
   product, so greedy answers stay what the model gives on the GPU, but where two tokens tie within
   16-bit rounding; the price is CPU time, 0.5 GFLOP a generated token. Quantizing the layer to NF4
   on the GPU instead would save less (it still takes 0.13 GiB) and change answers: on the tiny
   model, NF4 rounding of the output layer changed 53 of 108 greedy answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GiB = 2**30
# Bytes per NF4 parameter: 4 bits, an 8-bit scale per 64 (double quantisation), an fp32 per 16,384.
NF4_BYTES = 0.5 + 1 / 64 + 4 / 16384


def gib(size: float) -> str:
    return f"{size / GiB:.1f} GiB" if size >= GiB / 10 else f"{size / 2**20:.0f} MiB"


@dataclass(frozen=True)
class Placement:
    """Where the two vocabulary-sized matrices go; the decoder layers are always on the device."""

    embedding_on_cpu: bool = False
    head_on_cpu: bool = False

    def describe(self) -> str:
        parts = (["input embedding in CPU memory (a lookup)"] if self.embedding_on_cpu else []) + \
                (["output layer in CPU memory (fp32 there)"] if self.head_on_cpu else [])
        return ", ".join(parts)


ON_DEVICE = Placement()
PLACEMENTS = (ON_DEVICE, Placement(embedding_on_cpu=True), Placement(embedding_on_cpu=True, head_on_cpu=True))


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
        from .loading import read_config
        from .sources import resolve_model_dir

        return cls.of(read_config(resolve_model_dir(base, weights=False)))

    def linear_params(self) -> int:
        """Parameters of the decoder layers' projections: what NF4 quantizes."""
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    def weight_bytes(self, quantized: bool, element: int, placement: Placement = ON_DEVICE) -> float:
        """The weights on the device: under NF4 the embedding and output matrices stay 16-bit, unless
        `placement` keeps them in CPU memory."""
        matrices = (not placement.embedding_on_cpu) + (not placement.head_on_cpu)
        return matrices * self.vocab * self.hidden * element + self.linear_params() * (NF4_BYTES if quantized else element)

    def unpack_bytes(self, element: int) -> float:
        """Under NF4, a forward of more than one token unpacks each 4-bit matrix to 16 bits before
        multiplying: the largest, the MLP's gate/up projection, is the transient to leave room for."""
        return 2 * self.intermediate * self.hidden * element

    def token_bytes(self, element: int) -> float:
        """A forward's widest transient per token: the MLP's gate/up output and its activation."""
        return (3 * self.intermediate + 4 * self.hidden) * element

    def kv_bytes(self, element: int) -> float:
        """The KV cache of one token."""
        return self.layers * 2 * self.kv_heads * self.head_dim * element

    def row_bytes(self, prompt: int, cache: int, element: int) -> float:
        """One prompt of a generation batch: its static KV cache, and the prefill's widest transient."""
        return cache * self.kv_bytes(element) + prompt * self.token_bytes(element)

    def perplexity_row_bytes(self, length: int, element: int) -> float:
        """One sequence of a perplexity forward: its prefill transients and final hidden states (the
        logits are computed a chunk of positions at a time, `generation.PERPLEXITY_CHUNK`)."""
        return length * (self.token_bytes(element) + self.hidden * element)


class CpuEmbedding(nn.Module):
    """An input embedding whose table stays in CPU memory: the rows of a step's tokens are looked up
    there and sent to `device`. The table is a buffer, not a parameter, so `model.device` (its first
    parameter's) is still the GPU, and the model's inputs go there as usual."""

    def __init__(self, weight: torch.Tensor, device: torch.device | str | int):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.target = torch.device(device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids.cpu(), self.weight).to(self.target)


class CpuHead(nn.Module):
    """An output layer whose matrix stays in CPU memory, in fp32: the hidden vectors are sent there
    and their logits (fp32) come back to the hidden states' device. A buffer, as `CpuEmbedding`'s."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.float(), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden.to("cpu", torch.float32), self.weight).to(hidden.device)
