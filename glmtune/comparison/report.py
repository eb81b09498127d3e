"""The comparison report's data, declared once: which metrics are measured (METRICS), what each
prompt's answers scored, the aggregate over prompts, the timing and the settings. Frozen records
that the console, log, chart and HTML read by attribute; the JSON report's layout is made only
when it is written (`Report.to_json`).

A new metric is one line in METRICS and its computation in `scoring.score_answer`."""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable, Generic, TypeVar

from .verdict import Interval, Verdict

SIDES = ("base", "tuned")
NO_BENCHMARK_SETTING = "none (no --benchmark)"  # Settings.benchmark where the user asked for no knowledge check
HIGHER, LOWER = "higher", "lower"
SCORING_NOTE = ("ROUGE on jieba words and BLEU-4 on characters, both with punctuation and symbols removed; "
                "intervals: 95% percentile bootstrap over prompts of the paired difference tuned - base; "
                "timing rows are batch figures without an interval where prompts shared a generate() call")


@dataclass(frozen=True)
class Metric:
    key: str  # the name of its value in each answer's scores and in the JSON report
    label: str
    better: str | None  # HIGHER or LOWER; None where neither is: longer is not better, nor shorter
    batched: bool = False  # a time that the prompts of one generate() call share: per prompt only in batches of one


METRICS = (
    Metric("rougeL", "ROUGE-L F vs reference", HIGHER),
    Metric("rouge1", "ROUGE-1 F vs reference", HIGHER),
    Metric("rouge2", "ROUGE-2 F vs reference", HIGHER),
    Metric("bleu4", "char BLEU-4 vs reference", HIGHER),
    Metric("ppl", "reference perplexity", LOWER),
    Metric("term_per_100", "medical terms / 100 chars", HIGHER),
    Metric("term_distinct", "distinct medical terms", HIGHER),
    Metric("chars", "output length (chars)", None),
    Metric("tokens", "output length (tokens)", None),
    Metric("overlap_word", "prompt overlap (jieba words)", None),
    Metric("overlap_bigram", "prompt overlap (char bigrams)", None),
    Metric("latency_s", "latency per answer (s)", LOWER, batched=True),
    Metric("ttft_s", "time to first token (s)", LOWER, batched=True),
    Metric("decode_tok_s", "decode speed per answer (tok/s)", HIGHER, batched=True),
)

T = TypeVar("T")


@dataclass(frozen=True)
class Both(Generic[T]):
    """One value for each side: the base model's and the fine-tuned one's."""
    base: T
    tuned: T

    @classmethod
    def of(cls, make: Callable[[str], T]) -> Both[T]:
        return cls(*(make(side) for side in SIDES))

    def __getitem__(self, side: str) -> T:
        return getattr(self, side)


@dataclass(frozen=True)
class Answer:
    """One side's answer to one prompt: its text, its flags (metrics.FLAGS) and its value of every
    metric, by METRICS key (None where undefined: ROUGE without a reference)."""
    text: str
    flags: list[str]
    scores: dict[str, float | None]

    def to_json(self) -> dict:
        return {"answer": self.text, "flags": self.flags, **self.scores}

    @classmethod
    def from_json(cls, data: dict) -> Answer:
        return cls(data["answer"], data["flags"], {m.key: data.get(m.key) for m in METRICS})


@dataclass(frozen=True)
class Change:
    chars: float | None  # relative: (tuned - base) / base; None from an empty base answer
    rougeL: float | None  # tuned - base; None without a reference


@dataclass(frozen=True)
class Row:
    """One prompt, its reference answer (None for ad-hoc questions) and both sides' answers."""
    index: int
    prompt: str
    reference: str | None
    department: str | None
    answers: Both[Answer]
    change: Change

    @property
    def id(self) -> str:
        """The prompt's name in reviewers' ratings: its number and a digest of its text, so that a
        rating never lands on another prompt that happens to have the same number."""
        return f"p{self.index + 1}-{hashlib.sha256(self.prompt.encode()).hexdigest()[:8]}"

    def to_json(self) -> dict:
        return {"index": self.index, "id": self.id, "prompt": self.prompt, "reference": self.reference,
                "department": self.department, **{side: self.answers[side].to_json() for side in SIDES},
                "change": asdict(self.change)}

    @classmethod
    def from_json(cls, data: dict) -> Row:
        return cls(data["index"], data["prompt"], data["reference"], data["department"],
                   Both(*(Answer.from_json(data[side]) for side in SIDES)), Change(**data["change"]))


@dataclass(frozen=True)
class Stats:
    """A side's values of one metric over prompts (metrics.summarize); mean and median are None
    where no prompt has a value."""
    mean: float | None
    median: float | None
    n: int


@dataclass(frozen=True)
class MetricResult:
    label: str
    better: str | None
    base: Stats
    tuned: Stats
    difference: Interval | None  # paired, tuned - base; None where no prompt has both values; a batch
    # figure (low and high None) for a batched metric whose prompts shared generate() calls

    @property
    def scale(self) -> float:
        """The size of the means, which sets how many decimals the figures get."""
        return max(abs(self.base.mean or 0), abs(self.tuned.mean or 0))

    def difference_text(self) -> str:
        """The paired difference and its interval as the tables and the chart write it."""
        return "-" if self.difference is None else self.difference.text(self.scale)


@dataclass(frozen=True)
class Distinct:
    distinct1: float
    distinct2: float


@dataclass(frozen=True)
class DepartmentResult:
    """ROUGE-L over one department's prompts."""
    department: str
    n: int
    base: float | None
    tuned: float | None
    difference: Interval | None
    wins_ties_losses: tuple[int, int, int]


@dataclass(frozen=True)
class Accuracy:
    """Exam accuracy of both sides over a group's or a subject's questions, in percent, and the
    paired difference in points (tuned - base, each question right 100 or wrong 0)."""
    name: str  # the group, or the subject
    group: str
    n: int
    chance: float  # percent a blind pick gets right
    base: float
    tuned: float
    difference: Interval | None
    fixed: int  # questions the base got wrong and the fine-tuned model right
    broke: int  # right before, wrong after

    def difference_text(self) -> str:
        return "-" if self.difference is None else f"{self.difference.text(POINTS_SCALE)} points"


POINTS_SCALE = 10  # accuracy differences are read to a tenth of a point


@dataclass(frozen=True)
class ChangedAnswer:
    """A question the fine-tuned side answered otherwise than the base."""
    id: str
    subject: str
    group: str
    question: str
    answer: str  # the right letters
    base: str  # each side's letters
    tuned: str


@dataclass(frozen=True)
class Knowledge:
    """The knowledge check: both sides on the same exam questions, scored by the likelihood of each
    option's letter as the answer's first token."""
    sources: list[str]
    shots: int
    layout: str  # the prompt layout both sides read, the run's own
    questions: int
    unmapped: int  # questions of subjects outside the built-in map, counted as medical
    groups: list[Accuracy]  # medical, then general: the groups that have questions
    subjects: list[Accuracy]  # medical subjects first, then general, each by name
    changed: list[ChangedAnswer]
    seconds: Both[float]  # each side's time to answer every question

    def group(self, name: str) -> Accuracy | None:
        return next((g for g in self.groups if g.name == name), None)


@dataclass(frozen=True)
class Rating:
    """One reviewer's blind choice on one prompt, unblinded."""
    reviewer: str
    prompt: str  # the prompt's id (Row.id)
    better: str  # "base", "tie" or "tuned"
    note: str
    source: str  # the ratings file it was folded in from
    at: str = ""  # when it was given (the browser's clock, ISO 8601): the latest per reviewer and prompt counts
    revealed: bool = False  # given while the sides' names were shown: kept, but no blind rating


@dataclass(frozen=True)
class Preference:
    """The reviewers' preference over a set of prompts: each prompt scores the mean of its ratings
    (fine-tuned preferred 1, tie 1/2, base 0); `share` is the mean over prompts in percent, and
    `difference` its distance from an even 50% with a bootstrap interval over prompts."""
    name: str  # "all prompts", or the department
    prompts: int
    tuned: int  # ratings preferring each side, and ties
    ties: int
    base: int
    share: float
    difference: Interval | None

    def share_text(self) -> str:
        """'68% [55%, 80%]', or '68%' without an interval."""
        d = self.difference
        if d is None or d.low is None or d.high is None:
            return f"{self.share:.0f}%"
        return f"{self.share:.0f}% [{50 + d.low:.0f}%, {50 + d.high:.0f}%]"


@dataclass(frozen=True)
class Agreement:
    measure: str  # "Cohen's kappa" (two reviewers) or "Fleiss' kappa" (more)
    value: float | None  # None where it is undefined: every rating the same
    prompts: int  # the prompts every reviewer counted here rated
    reviewers: int


@dataclass(frozen=True)
class Disagreement:
    """A prompt where the reviewers and ROUGE-L point opposite ways."""
    index: int
    prompt: str
    reviewers: float  # the reviewers' mean: +1 fine-tuned preferred, 0 tie, -1 base
    rouge: float  # tuned - base ROUGE-L


@dataclass(frozen=True)
class Review:
    """The blind A/B review folded into the report (`review.fold`)."""
    reviewers: list[str]
    ratings: list[Rating]  # every rating folded in so far, the latest per reviewer and prompt
    revealed: int  # of them given with the names shown, which the figures below leave out
    overall: Preference | None  # None where every rating was given with the names shown
    departments: list[Preference]  # largest first
    agreement: Agreement | None  # None with one reviewer, or no prompt rated by every reviewer
    disagreements: list[Disagreement]  # strongest first


@dataclass(frozen=True)
class Aggregate:
    """Everything measured over all prompts."""
    prompts: int
    verdict: Verdict
    metrics: dict[str, MetricResult]  # by METRICS key, in METRICS order
    flags: Both[dict[str, int]]  # answers with each flag, in metrics.FLAGS order
    degenerate: Both[int]
    rougeL_wins_ties_losses: tuple[int, int, int] | None  # None without references
    distinct: Both[Distinct]
    departments: list[DepartmentResult]  # largest first; empty without references
    knowledge: Knowledge | None = None  # None without --benchmark
    review: Review | None = None  # None until reviewers' ratings are folded in (--ratings)


@dataclass(frozen=True)
class SideTiming:
    wall_s: float
    new_tokens: int
    tok_per_s: float
    peak_gpu_gib: float | None  # None off a GPU


@dataclass(frozen=True)
class Timing:
    base: SideTiming
    tuned: SideTiming
    load_s: float
    warm_up_s: float
    compiled: bool
    merge_s: float
    weights: str
    decoding: str
    score_s: float


@dataclass(frozen=True)
class Settings:
    adapter: str
    base_model: str
    weights: str
    compile: str
    prompt_format: str
    prompts: int
    prompt_source: str
    decoding: str
    max_new_tokens: int
    batch_size: int
    seed: int
    terms_file: str
    device: str
    processes: int
    seen_in_training: str
    benchmark: str  # the knowledge check's sources and shots, or why none ran
    report_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names it in reviewers' ratings


@dataclass(frozen=True)
class Report:
    settings: Settings
    aggregate: Aggregate
    timing: Timing
    rows: list[Row]
    notes: tuple[str, ...] = ()  # what the verdict stands on (the prompts seen in training), said under it

    def to_json(self) -> dict:
        return {"settings": asdict(self.settings), "scoring": SCORING_NOTE, "aggregate": asdict(self.aggregate),
                "timing": asdict(self.timing), "notes": list(self.notes),
                "samples": [row.to_json() for row in self.rows]}

    @classmethod
    def from_json(cls, data: dict) -> Report:
        """The report as `to_json` wrote it, its records whole again."""
        return cls(_load(Settings, data["settings"]), _load(Aggregate, data["aggregate"]),
                   _load(Timing, data["timing"]), [Row.from_json(r) for r in data["samples"]],
                   tuple(data.get("notes", ())))


def _load(kind, value):
    """A JSON value as the type `kind` (a record, Both[...], a list, tuple or dict of them, optional
    or plain) that asdict wrote it from."""
    if value is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _load(next(a for a in args if a is not type(None)), value)
    if origin is Both:
        return Both(*(_load(args[0], value[side]) for side in SIDES))
    if origin is list:
        return [_load(args[0], v) for v in value]
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        return {k: _load(args[1], v) for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind, globals())
        return kind(**{f.name: _load(hints[f.name], value[f.name]) for f in dataclasses.fields(kind) if f.name in value})
    return value
