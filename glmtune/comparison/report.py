"""The comparison report's data, declared once: which metrics are measured (METRICS), what each
prompt's answers scored, the aggregate over prompts, the timing and the settings. Frozen records
that the console, log, chart and HTML read by attribute; the JSON report's layout is made only
when it is written (`Report.to_json`).

A new metric is one line in METRICS and its computation in `scoring.score_answer`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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

    def to_json(self) -> dict:
        return {"index": self.index, "prompt": self.prompt, "reference": self.reference,
                "department": self.department, **{side: self.answers[side].to_json() for side in SIDES},
                "change": asdict(self.change)}


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


@dataclass(frozen=True)
class Report:
    settings: Settings
    aggregate: Aggregate
    timing: Timing
    rows: list[Row]

    def to_json(self) -> dict:
        return {"settings": asdict(self.settings), "scoring": SCORING_NOTE, "aggregate": asdict(self.aggregate),
                "timing": asdict(self.timing), "samples": [row.to_json() for row in self.rows]}
