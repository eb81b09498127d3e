"""The knowledge check: did the fine-tune learn medicine, and did it forget the rest?

Both sides answer the same multiple-choice exam questions (CMMLU, C-Eval, CMB or the user's own), in
the run's prompt layout. Each question costs one forward pass (batched by length), no generation:
the answer is the option whose letter the model finds most likely as the first token of its reply
(where several options are right, the k most likely letters, k the number of right ones, judged all
or nothing). Medical and general subjects are reported apart, each with the paired difference in
accuracy and its bootstrap interval, and the questions whose answer changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..core import device, distributed
from ..core.errors import DataError
from ..data.benchmarks import GROUPS, LETTERS, Question, prompt_text, read_benchmark, select, shots_for
from .report import Accuracy, Both, ChangedAnswer, Knowledge
from .verdict import paired_interval

MAX_ROWS = 512  # questions per forward pass at most, however short


@dataclass(frozen=True)
class Exam:
    """The questions both sides answer and the text each side reads (`read_exam`)."""
    questions: list[Question]
    texts: list[str]  # the user's turn per question: instruction, worked examples, question
    sources: list[str]
    shots: int


def read_exam(values: list[str], shots: int, per_subject: int) -> Exam | None:
    """The questions of every --benchmark (hub names fetched into the cache), checked whole before
    any model loads; None for none."""
    from ..data.suites import SUITES, suite_path

    if not values or values == ["none"]:
        return None
    questions, texts, names = [], [], []
    for value in values:
        hub = value.lower() in SUITES and not Path(value).expanduser().exists()  # a folder named cmmlu is read
        path = suite_path(value) if hub else Path(value).expanduser()
        name = value.lower() if hub else path.name
        while name in names:  # two files of one name: their questions' ids must still differ
            name += "+"
        names.append(name)
        benchmark = read_benchmark(path, name)
        for question in select(benchmark, per_subject):
            questions.append(question)
            texts.append(prompt_text(question, shots_for(benchmark, question, shots)))
    return Exam(questions, texts, [str(v) for v in values], shots)


@dataclass(frozen=True)
class EncodedExam:
    """Each question's ids (prompt, then the reply's tokens before the letter) and its options'
    letter tokens."""
    ids: list[list[int]]
    letters: list[list[int]]  # per question, the token of each option's letter, in option order


def encode_exam(tokenizer, exam: Exam, layout: str) -> EncodedExam:
    """The ids each side reads. A reply's first tokens can be alike for every letter (the chat
    layout's "\\n", a dummy-prefix piece): they go into the prompt, and the letters are told apart at
    the first token where they differ."""
    from ..model.prompts import answer_ids, prompt_ids

    replies = {letter: answer_ids(tokenizer, letter, layout) for letter in LETTERS}
    lead = 0
    while all(len(r) > lead + 1 for r in replies.values()) and len({r[lead] for r in replies.values()}) == 1:
        lead += 1
    token = {letter: r[lead] for letter, r in replies.items()}
    if len(set(token.values())) < len(token):
        raise DataError("this tokenizer writes the option letters A-J with the same first token; the knowledge "
                        "check cannot tell the options apart (use --benchmark none)")
    prefix = replies["A"][:lead]
    ids, letters = [], []
    context = tokenizer.model_max_length
    for question, text in zip(exam.questions, exam.texts):
        row = prompt_ids(tokenizer, text, layout) + prefix
        if len(row) > context:
            raise DataError(f"exam question {question.id} is {len(row)} tokens with {exam.shots} worked examples, "
                            f"more than the {context} this model reads; use fewer --benchmark-shots")
        ids.append(row)
        letters.append([token[letter] for letter in question.options])
    return EncodedExam(ids, letters)


def letter_logprobs(model, encoded: EncodedExam, indices: list[int], token_budget: int, tokenizer) -> list[list[float]]:
    """log P(letter | prompt) of each option, for the questions `indices`, in that order: one forward
    pass per question, batched by length (left-padded as generation pads, positions counted from each
    row's first real token), only the last position's logits computed."""
    import torch

    batches: list[list[int]] = []
    for i in sorted(indices, key=lambda i: len(encoded.ids[i])):  # ascending: each row is its batch's widest
        if not batches or len(batches[-1]) == MAX_ROWS or (len(batches[-1]) + 1) * len(encoded.ids[i]) > token_budget:
            batches.append([])
        batches[-1].append(i)
    out: dict[int, list[float]] = {}
    for batch in batches:
        padded = tokenizer.pad({"input_ids": [encoded.ids[i] for i in batch]}, padding=True, return_tensors="pt")
        positions = (padded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=padded["input_ids"].to(model.device),
                           attention_mask=padded["attention_mask"].to(model.device),
                           position_ids=positions.to(model.device), logits_to_keep=1).logits[:, -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, i in enumerate(batch):
            out[i] = logprobs[row, encoded.letters[i]].tolist()
    return [out[i] for i in indices]


def choose(question: Question, logprobs: list[float]) -> str:
    """The letters a side answers: the most likely one, or as many as are right where several are."""
    ranked = sorted(range(len(logprobs)), key=lambda j: -logprobs[j])[:len(question.answer)]
    letters = list(question.options)
    return "".join(sorted(letters[j] for j in ranked))


@dataclass(frozen=True)
class SideExam:
    choices: list[str]  # per question, in exam order
    logprobs: list[list[float]]
    seconds: float


def answer_exam(model, encoded: EncodedExam, exam: Exam, token_budget: int, tokenizer) -> SideExam:
    """One side's answers to every question; with several processes each takes its share."""
    mine = list(distributed.share(len(exam.questions)))
    device.synchronize()
    began = time.perf_counter()
    values = letter_logprobs(model, encoded, mine, token_budget, tokenizer)
    device.synchronize()
    shares = distributed.gather((mine, values, time.perf_counter() - began))
    logprobs: list = [None] * len(exam.questions)
    for indices, part, _ in shares:
        for i, value in zip(indices, part):
            logprobs[i] = value
    choices = [choose(q, lp) for q, lp in zip(exam.questions, logprobs)]
    return SideExam(choices, logprobs, max(share[2] for share in shares))


def accuracy(name: str, group: str, questions: list[Question], base: list[str], tuned: list[str]) -> Accuracy:
    """Both sides' accuracy over `questions` and the paired difference in points."""
    right = Both([100.0 * (c == q.answer) for q, c in zip(questions, base)],
                 [100.0 * (c == q.answer) for q, c in zip(questions, tuned)])
    n = len(questions)
    return Accuracy(name, group, n, 100 * sum(q.chance for q in questions) / n, sum(right.base) / n,
                    sum(right.tuned) / n, paired_interval(right.base, right.tuned),
                    sum(t > b for b, t in zip(right.base, right.tuned)),
                    sum(t < b for b, t in zip(right.base, right.tuned)))


def summarize(exam: Exam, layout: str, base: SideExam, tuned: SideExam) -> Knowledge:
    """Per group and per subject, and every question whose answer changed."""
    qs = exam.questions

    def over(keep) -> tuple[list[Question], list[str], list[str]]:
        picked = [i for i, q in enumerate(qs) if keep(q)]
        return [qs[i] for i in picked], [base.choices[i] for i in picked], [tuned.choices[i] for i in picked]

    groups = [accuracy(g, g, *over(lambda q, g=g: q.group == g)) for g in GROUPS if any(q.group == g for q in qs)]
    subjects = sorted({(GROUPS.index(q.group), q.subject, q.group) for q in qs})
    rows = [accuracy(s, g, *over(lambda q, s=s, g=g: q.subject == s and q.group == g)) for _, s, g in subjects]
    changed = [ChangedAnswer(q.id, q.subject, q.group, q.question, q.answer, b, t)
               for q, b, t in zip(qs, base.choices, tuned.choices) if b != t]
    return Knowledge(exam.sources, exam.shots, layout, len(qs), sum(not q.mapped for q in qs), groups, rows, changed,
                     Both(base.seconds, tuned.seconds))
