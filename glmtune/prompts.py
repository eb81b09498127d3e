"""Prompts and labels: what the model reads, and which tokens it is trained to write.

Two layouts:
- `glm3` (default, the seed's): `[gMASK] sop` + "[Round 1]\\n\\n问：{question}\\n\\n答：", then the answer
  and eos. Prompt and answer are encoded separately, as ChatGLM's own fine-tuning code does, so the
  answer tokens at training time are exactly what generation produces after the prompt.
- `chat`: ChatGLM3's native turns, `[gMASK] sop <|user|> \\n {question} <|assistant|>`, then "\\n",
  the answer and eos.

Truncation policy for `max_length` (whole sequence, eos included):
1. The prompt may take at most half of `max_length`; a longer question is cut at the end (the
   template around it is always kept).
2. The answer fills what is left; a longer answer is cut at the end and gets NO eos, so the model is
   never taught to stop mid-sentence. An answer therefore always keeps at least half the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerFast

from .tokenizer import chat_ids, sp_ids

PROMPT_FORMATS = ("glm3", "chat")
GLM3_TEMPLATE = "[Round 1]\n\n问：{question}\n\n答："
IGNORE_INDEX = -100  # labels the loss skips: prompt and padding


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool


def prompt_ids(tokenizer: PreTrainedTokenizerFast, question: str, prompt_format: str) -> list[int]:
    """The ids the model is given; generation continues right after them."""
    if prompt_format == "glm3":
        return tokenizer(GLM3_TEMPLATE.format(question=question)).input_ids
    if prompt_format == "chat":
        return chat_ids(tokenizer, [{"role": "user", "content": question}])
    raise ValueError(f"unknown prompt format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")


def answer_ids(tokenizer: PreTrainedTokenizerFast, answer: str, prompt_format: str) -> list[int]:
    """The ids the model should write after the prompt (eos not included)."""
    lead = sp_ids(tokenizer, "\n") if prompt_format == "chat" else []
    return lead + sp_ids(tokenizer, answer)


def _fitting_prompt(tokenizer, question: str, prompt_format: str, budget: int) -> list[int]:
    ids = prompt_ids(tokenizer, question, prompt_format)
    if len(ids) <= budget:
        return ids
    lo, hi = 0, len(question)  # longest question prefix whose prompt fits: binary search on characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(prompt_ids(tokenizer, question[:mid], prompt_format)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return prompt_ids(tokenizer, question[:lo], prompt_format)


def encode_example(
    tokenizer: PreTrainedTokenizerFast,
    question: str,
    answer: str,
    prompt_format: str = "glm3",
    max_length: int = 1024,
    train_on_prompt: bool = False,
) -> Encoded:
    """Token ids and labels for one (question, answer) pair, per the module's truncation policy."""
    if max_length < 16:
        raise ValueError(f"max_length {max_length} is too small to hold a prompt and an answer")
    full_prompt = prompt_ids(tokenizer, question, prompt_format)
    prompt = _fitting_prompt(tokenizer, question, prompt_format, max_length // 2)
    answer_part = answer_ids(tokenizer, answer, prompt_format) + [tokenizer.eos_token_id]
    room = max_length - len(prompt)
    truncated = len(prompt) < len(full_prompt) or len(answer_part) > room
    answer_part = answer_part[:room]
    input_ids = prompt + answer_part
    if train_on_prompt:
        labels = list(input_ids)
    else:
        labels = [IGNORE_INDEX] * len(prompt) + answer_part
    return Encoded(input_ids, labels, len(prompt), truncated)
