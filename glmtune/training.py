"""The pieces of the QLoRA job that the libraries leave to us: LoRA target names, the eval split,
tokenised datasets, padding, the length-grouped Trainer, a NaN guard and the loss plot."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset as HFDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from .memory import decoder_layers
from .prompts import IGNORE_INDEX, encode_example

NATIVE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
# The seed (and ChatGLM3 docs) name modules by their original names; the native model splits qkv.
CHATGLM_ALIASES = {
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
}


def resolve_lora_targets(spec: str) -> list[str]:
    """Comma-separated module names (native or ChatGLM3's) -> native `GlmForCausalLM` names."""
    targets: list[str] = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        mapped = CHATGLM_ALIASES.get(name, (name,))
        for target in mapped:
            if target not in NATIVE_TARGETS:
                known = ", ".join([*NATIVE_TARGETS, *CHATGLM_ALIASES])
                raise ValueError(f"--lora-target: unknown module {name!r}; use some of: {known}")
            if target not in targets:
                targets.append(target)
    if not targets:
        raise ValueError("--lora-target is empty; e.g. --lora-target q_proj,k_proj,v_proj,o_proj")
    return targets


def split_eval(examples: list, ratio: float, seed: int) -> tuple[list, list]:
    """A seeded, order-independent-of-run split: the same file and seed always hold out the same lines."""
    if not 0 <= ratio < 1:
        raise ValueError(f"--eval-ratio must be in [0, 1), not {ratio}")
    n_eval = round(len(examples) * ratio) if len(examples) > 1 else 0
    if ratio > 0:
        n_eval = min(max(n_eval, 1), len(examples) - 1)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    evaluation = [ex for i, ex in enumerate(examples) if i in held]
    return train, evaluation


@dataclass
class TokenStats:
    count: int
    truncated: int
    min: int
    median: float
    p95: int
    max: int
    answer_tokens: int

    def lines(self) -> list[str]:
        return [
            f"sequence tokens: min {self.min}, median {self.median:.0f}, p95 {self.p95}, max {self.max}",
            f"truncated to --max-length: {self.truncated} of {self.count}",
        ]


def tokenize_examples(examples, tokenizer, prompt_format: str, max_length: int, train_on_prompt: bool):
    """A `datasets.Dataset` of input_ids/labels/length, and its token statistics."""
    rows = []
    for ex in examples:
        enc = encode_example(tokenizer, ex.question, ex.answer, prompt_format, max_length, train_on_prompt)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels, "length": len(enc.input_ids),
                     "truncated": enc.truncated})
    lengths = sorted(r["length"] for r in rows) or [0]
    stats = TokenStats(
        count=len(rows), truncated=sum(r["truncated"] for r in rows), min=lengths[0],
        median=statistics.median(lengths), p95=lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
        max=lengths[-1], answer_tokens=sum(sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows),
    )
    dataset = HFDataset.from_list([{k: r[k] for k in ("input_ids", "labels", "length")} for r in rows])
    return dataset, stats


class PadCollator:
    """Right-pads a micro-batch to its own longest row (never to max_length), rounded up to a multiple
    of 8 so GPU matmuls stay on tensor-core shapes."""

    def __init__(self, pad_id: int, multiple_of: int = 8):
        self.pad_id, self.multiple_of = pad_id, multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        width = -(-width // self.multiple_of) * self.multiple_of
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length grouping whose shuffle is seeded per epoch. The Trainer's own sampler draws from the
    global RNG, so a run resumed from a checkpoint shuffled every later epoch differently."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class GroupedTrainer(Trainer):
    """The HF Trainer with rows of similar length batched together (little padding), reproducibly,
    and, given a `CheckpointPlan`, only as much activation checkpointing as each micro-batch needs."""

    def __init__(self, *args, checkpoint_plan=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint_plan = checkpoint_plan
        # Found once: walking every module of a 6B model on each micro-batch is wasted time.
        self.decoder_layers = decoder_layers(self.model) if checkpoint_plan is not None else []

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.checkpoint_plan is not None:
            self.checkpoint_plan.apply(self.decoder_layers, inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def evaluate(self, *args, **kwargs):
        # Creating the eval DataLoader draws from the global RNG. An epoch-end evaluation that runs
        # after a checkpoint would then shift every later dropout mask, and a run resumed from that
        # checkpoint would train differently from an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            return super().evaluate(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(group, dataset["length"], self.args.data_seed or self.args.seed)


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops at the first NaN/inf training loss instead of burning GPU hours on garbage."""

    def __init__(self):
        self.bad_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.bad_step = state.global_step
            control.should_training_stop = True


def plot_losses(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the values they store."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
