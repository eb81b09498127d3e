"""Prompts and labels: what the model reads, which tokens it is trained to write, and the padded
batches it reads them in.

Layouts:
- `glm3` (default for question/answer data, the seed's): `[gMASK] sop` + "[Round 1]\\n\\n问：{question}
  \\n\\n答：", then the answer and eos. Prompt and answer are encoded separately, as ChatGLM's own
  fine-tuning code does, so the answer tokens at training time are exactly what generation produces
  after the prompt.
- `chat` (ChatGLM3's native turns; always used for conversations): `[gMASK] sop [<|system|> \\n
  {system}] <|user|> \\n {question} <|assistant|>`, then "\\n", the answer and eos. In a conversation
  every reply is learned, and so is the token that ends it (the next `<|user|>`, or eos), as in
  ChatGLM3's finetune_demo; role tokens, system and user turns are not.

Truncation policy for `max_length` (whole sequence, eos included):
1. A conversation drops its oldest exchanges until it fits, keeping the system prompt and the last.
2. The prompt may take at most half of `max_length`; a longer question is cut at the end (the
   template around it is always kept).
3. The answer fills what is left; a longer answer is cut at the end and gets NO eos, so the model is
   never taught to stop mid-sentence. An answer therefore always keeps at least half the budget,
   unless the template and system prompt alone take more: a row whose prompt leaves no answer token
   has nothing to learn (a micro-batch of such rows has a NaN loss), and is left out and reported.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.config import PROMPT_FORMATS
from ..core.errors import few

if TYPE_CHECKING:  # transformers loads torch; the layout needs only the tokenizer object
    from transformers import PreTrainedTokenizerFast

GLM3_TEMPLATE = "[Round 1]\n\n问：{question}\n\n答："
ROLES = ("system", "user", "assistant", "observation")


def sp_ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """The SentencePiece ids of `text` alone (dummy prefix included, no `[gMASK] sop`)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def chat_ids(
    tokenizer: PreTrainedTokenizerFast, messages: list[dict], add_generation_prompt: bool = True
) -> list[int]:
    """ChatGLM3's native chat layout: `[gMASK] sop`, then per message its role token, the ids of
    "\\n" and the ids of the content (each encoded separately, as the official code does), then
    `<|assistant|>` when a reply is to be generated."""
    ids = tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"])
    newline = sp_ids(tokenizer, "\n")
    for message in messages:
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"unknown chat role {role!r}; ChatGLM3 knows {', '.join(ROLES)}")
        ids += [tokenizer.convert_tokens_to_ids(f"<|{role}|>")] + newline + sp_ids(tokenizer, message["content"])
    if add_generation_prompt:
        ids.append(tokenizer.convert_tokens_to_ids("<|assistant|>"))
    return ids


IGNORE_INDEX = -100  # labels the loss skips: prompt and padding


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool


def prompt_ids(tokenizer, question: str, prompt_format: str, history=(), system: str | None = None) -> list[int]:
    """The ids the model is given; generation continues right after them."""
    if prompt_format == "glm3":
        if history or system is not None:
            raise ValueError("the glm3 layout has no system prompt or earlier turns; use the chat layout")
        return tokenizer(GLM3_TEMPLATE.format(question=question)).input_ids
    if prompt_format == "chat":
        messages = [{"role": "system", "content": system}] if system is not None else []
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return chat_ids(tokenizer, [*messages, {"role": "user", "content": question}])
    raise ValueError(f"unknown prompt format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")


def example_prompt_ids(tokenizer, example, prompt_format: str) -> list[int]:
    """`prompt_ids` of a data example, with its system prompt and earlier turns."""
    return prompt_ids(tokenizer, example.question, prompt_format, example.history, example.system)


def answer_ids(tokenizer, answer: str, prompt_format: str) -> list[int]:
    """The ids the model should write after the prompt (eos not included)."""
    lead = sp_ids(tokenizer, "\n") if prompt_format == "chat" else []
    return lead + sp_ids(tokenizer, answer)


def _fitting_prompt(tokenizer, question: str, prompt_format: str, budget: int, system: str | None) -> list[int]:
    def build(q: str) -> list[int]:
        return prompt_ids(tokenizer, q, prompt_format, system=system)

    ids = build(question)
    if len(ids) <= budget:
        return ids
    lo, hi = 0, len(question)  # longest question prefix whose prompt fits: binary search on characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(build(question[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return build(question[:lo])


def encode_example(tokenizer, question: str, answer: str, prompt_format: str = "glm3", max_length: int = 1024,
                   train_on_prompt: bool = False, system: str | None = None) -> Encoded:
    """Token ids and labels for one (question, answer) pair, per the module's truncation policy."""
    if max_length < 16:
        raise ValueError(f"max_length {max_length} is too small to hold a prompt and an answer")
    full_prompt = prompt_ids(tokenizer, question, prompt_format, system=system)
    prompt = _fitting_prompt(tokenizer, question, prompt_format, max_length // 2, system)
    answer_part = answer_ids(tokenizer, answer, prompt_format) + [tokenizer.eos_token_id]
    room = max_length - len(prompt)
    truncated = len(prompt) < len(full_prompt) or len(answer_part) > room
    answer_part = answer_part[:max(room, 0)]  # a prompt past max_length leaves no room at all
    input_ids = prompt + answer_part
    labels = list(input_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt) + answer_part
    return Encoded(input_ids, labels, len(prompt), truncated)


def _conversation(tokenizer, history, question: str, answer: str, system: str | None,
                  train_on_prompt: bool) -> Encoded:
    """All turns in the chat layout; labels on every reply and the token that ends it."""
    newline = sp_ids(tokenizer, "\n")
    role = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in ("system", "user", "assistant")}
    ids = tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"])
    learn = [False, False]
    if system is not None:
        part = [role["system"], *newline, *sp_ids(tokenizer, system)]
        ids, learn = ids + part, learn + [False] * len(part)
    turns = [*history, (question, answer)]
    for index, (user, reply) in enumerate(turns):
        part = [role["user"], *newline, *sp_ids(tokenizer, user), role["assistant"]]
        ids += part
        learn += [index > 0] + [False] * (len(part) - 1)  # a <|user|> after a reply ends that reply
        part = [*newline, *sp_ids(tokenizer, reply)]
        ids, learn = ids + part, learn + [True] * len(part)
    ids.append(tokenizer.eos_token_id)
    learn.append(True)
    prompt_len = len(ids) - len(answer_ids(tokenizer, answer, "chat")) - 1
    labels = list(ids) if train_on_prompt else [t if keep else IGNORE_INDEX for t, keep in zip(ids, learn)]
    return Encoded(ids, labels, prompt_len, False)


def encode(tokenizer, example, prompt_format: str, max_length: int, train_on_prompt: bool = False) -> Encoded:
    """Ids and labels for a data example: a conversation (system prompt or earlier turns) in the
    chat layout with every reply learned, anything else through `encode_example`."""
    history = list(example.history)
    while history:
        enc = _conversation(tokenizer, history, example.question, example.answer, example.system, train_on_prompt)
        if len(enc.input_ids) <= max_length:
            return enc if len(history) == len(example.history) else dataclasses.replace(enc, truncated=True)
        history.pop(0)
    enc = encode_example(tokenizer, example.question, example.answer, prompt_format, max_length, train_on_prompt,
                         system=example.system)
    return dataclasses.replace(enc, truncated=True) if example.history else enc


@dataclass
class TokenStats:
    count: int
    truncated: int
    min: int
    median: float
    p95: int
    max: int
    answer_tokens: int
    unanswered: list[int] = dataclasses.field(default_factory=list)  # data lines left out: no answer token
    needed_length: int = 0  # the --max-length at which each of them keeps its whole prompt (half the budget)

    def lines(self) -> list[str]:
        lines = [
            f"sequence tokens: min {self.min}, median {self.median:.0f}, p95 {self.p95}, max {self.max}",
            f"truncated to --max-length: {self.truncated} of {self.count}",
        ]
        if self.unanswered:
            lines.append(f"left out, no answer token within --max-length: {len(self.unanswered)} rows "
                         f"({self.where_and_fix()})")
        return lines

    def where_and_fix(self) -> str:
        """The rows left out and how to keep them, for the report and for the refusal."""
        return (f"line{'s' if len(self.unanswered) > 1 else ''} {few(self.unanswered, 5)}: their system prompt and question fill it; "
                f"raise --max-length to {self.needed_length}, or shorten the system prompt")


def tokenize_examples(examples, tokenizer, prompt_format: str, max_length: int, train_on_prompt: bool = False):
    """A `datasets.Dataset` of input_ids/labels/length, and its token statistics; rows with no answer
    token are left out, and the statistics name them."""
    from datasets import Dataset

    rows, unanswered = [], []
    for ex in examples:
        enc = encode(tokenizer, ex, prompt_format, max_length, train_on_prompt)
        if len(enc.input_ids) == enc.prompt_len:
            unanswered.append(ex)
            continue
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels, "length": len(enc.input_ids),
                     "truncated": enc.truncated})
    lengths = sorted(r["length"] for r in rows) or [0]
    stats = TokenStats(
        count=len(rows), truncated=sum(r["truncated"] for r in rows), min=lengths[0],
        median=statistics.median(lengths), p95=lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
        max=lengths[-1], answer_tokens=sum(sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows),
        unanswered=[ex.line_no for ex in unanswered],
        needed_length=2 * max((len(prompt_ids(tokenizer, ex.question, prompt_format, system=ex.system))
                               for ex in unanswered), default=0),
    )
    dataset = Dataset.from_list([{k: r[k] for k in ("input_ids", "labels", "length")} for r in rows])
    return dataset, stats


def padded_width(longest: int, multiple_of: int = 8) -> int:
    """The width a micro-batch is padded to: its longest row, rounded up."""
    return -(-longest // multiple_of) * multiple_of


class PadCollator:
    """Right-pads a micro-batch to its own longest row (never to max_length), rounded up to a multiple
    of 8 so GPU matmuls stay on tensor-core shapes."""

    def __init__(self, pad_id: int, multiple_of: int = 8):
        self.pad_id, self.multiple_of = pad_id, multiple_of

    def __call__(self, rows: list[dict]):
        import torch

        width = padded_width(max(len(r["input_ids"]) for r in rows), self.multiple_of)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
