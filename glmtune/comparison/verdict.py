"""Did the fine-tune help? Paired differences over prompts with bootstrap confidence intervals,
wins / ties / losses, and the plain sentences a user reads first.

Every prompt is answered by both sides, so each metric gives one paired difference (tuned minus
base) per prompt; the interval is a percentile bootstrap of their mean over prompts. A side whose
answers degenerate (empty, punctuation only, looping) never reads as an improvement, whatever its
scores: a model that prints "，。" can still lower the reference perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .metrics import FLAGS

if TYPE_CHECKING:  # for annotations only: the report's records import this module
    from .report import Accuracy, Both, Knowledge, MetricResult, Preference, Review

CONFIDENCE = 0.95
RESAMPLES = 4000
FEW_VALUES = 8  # data of at most this many distinct values is resampled by their counts
DEGENERATE_SHARE = 0.2  # at least this share of the tuned answers degenerate: broken
FEW_PROMPTS = 20  # fewer, and no difference is called reliable (see Interval.reliable)
TIE = 1e-9
ROUGE_SCALE = 0.1  # ROUGE and BLEU differences are read to three decimals
DEGENERATE = FLAGS[:3]  # empty, punctuation-only, repetitive; truncated is a limit, not a fault


@dataclass(frozen=True)
class Interval:
    """Mean paired difference (tuned - base) over `n` prompts and its bootstrap interval; low and high
    are None where there is no interval: every prompt differs alike (one prompt, or all the same), or
    a batch figure (`batch_difference`)."""
    mean: float
    low: float | None
    high: float | None
    n: int
    batch: bool = False

    @property
    def reliable(self) -> bool:
        """The interval excludes zero, over enough prompts for the interval to mean it: with fewer
        than FEW_PROMPTS a percentile bootstrap is too narrow (simulated with no true difference, it
        excludes zero in 49% of trials at 2 prompts, 16% at 5, 7% at 20, 5% at 50)."""
        if self.batch:
            return False
        if self.low is None or self.high is None:  # every prompt moved alike: as sure as prompts can make it
            return self.n >= FEW_PROMPTS and self.mean != 0
        return self.n >= FEW_PROMPTS and (self.low > 0 or self.high < 0)

    def text(self, scale: float) -> str:
        """'+0.004 [-0.005, +0.016]', with the decimals `scale` (the size of what differs) warrants, and
        more where the bounds would otherwise print alike: an interval is never shown as [x, x]."""
        mean = number(self.mean, scale, sign=True)
        if self.batch:
            return f"{mean} (batch figure, no interval)"
        if self.low is None or self.high is None:
            return f"{mean} (one prompt)" if self.n < 2 else f"{mean} (the same on all {self.n} prompts)"
        extra = 0
        while number(self.low, scale, True, extra) == number(self.high, scale, True, extra):
            extra += 1
        return (f"{number(self.mean, scale, True, extra)} "
                f"[{number(self.low, scale, True, extra)}, {number(self.high, scale, True, extra)}]")


def number(v: float | None, scale: float | None = None, sign: bool = False, extra: int = 0) -> str:
    """A figure with as many decimals as its magnitude (or `scale`'s) warrants, and `extra` more:
    3130, 31.3, 3.13, 0.313."""
    if v is None:
        return "-"
    size = abs(scale if scale is not None else v)
    decimals = extra + (0 if size >= 100 else 1 if size >= 10 else 2 if size >= 1 else 3)
    return f"{v:{'+' if sign else ''}.{decimals}f}"


def _pairs(base: list, tuned: list) -> list[tuple[float, float]]:
    """(base, tuned) of the prompts where both sides have a value."""
    return [(b, t) for b, t in zip(base, tuned) if b is not None and t is not None]


def mean_interval(values: list[float], seed: int = 0) -> Interval | None:
    """The mean of `values` (one per prompt) and its 95% percentile bootstrap interval over prompts.
    (scipy.stats.bootstrap does this too, but would be a 40 MB dependency for these lines.)"""
    if not values:
        return None
    data = np.array(values, dtype=float)
    if data.min() == data.max():  # one prompt, or all alike: resampling has nothing to vary
        return Interval(float(data.mean()), None, None, len(data))
    rng = np.random.default_rng(seed)
    values, counts = np.unique(data, return_counts=True)
    if len(values) <= FEW_VALUES:  # exam answers, ratings: resampling their counts is the same bootstrap, in far less memory
        means = rng.multinomial(len(data), counts / len(data), size=RESAMPLES) @ values / len(data)
    else:
        means = data[rng.integers(0, len(data), size=(RESAMPLES, len(data)))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    if low == high:  # values a rounding apart: still nothing to vary, and no [x, x] to print
        return Interval(float(data.mean()), None, None, len(data))
    return Interval(float(data.mean()), float(low), float(high), len(data))


def paired_interval(base: list, tuned: list, seed: int = 0) -> Interval | None:
    """Bootstrap interval of the mean of tuned - base over the prompts where both have a value."""
    return mean_interval([t - b for b, t in _pairs(base, tuned)], seed)


def batch_difference(base: list, tuned: list) -> Interval | None:
    """The mean difference tuned - base of a figure that prompts sharing a generate() call share
    (their batch's prefill, its steps' pace), without an interval: resampling prompts that carry
    one batch's time would present that one measurement as many, and the interval as certain."""
    pairs = _pairs(base, tuned)
    if not pairs:
        return None
    return Interval(float(np.mean([t - b for b, t in pairs])), None, None, len(pairs), batch=True)


def wins_ties_losses(base: list, tuned: list) -> tuple[int, int, int]:
    """Prompts where tuned scores higher / the same / lower than base."""
    pairs = _pairs(base, tuned)
    wins = sum(t - b > TIE for b, t in pairs)
    losses = sum(b - t > TIE for b, t in pairs)
    return wins, len(pairs) - wins - losses, losses


@dataclass(frozen=True)
class Verdict:
    headline: str  # one line: helped / hurt / no reliable difference / broken / cannot tell
    sentences: list[str]  # one per conclusion, most important first


def _flag_counts(flags: list[list[str]], n: int) -> str:
    """One side's degenerate answers, each count with its own flag ('20 of 27 repetitive'), or 'none':
    a bare total beside the other side's flagged counts would read as the same flag."""
    counts = {name: sum(name in answer_flags for answer_flags in flags) for name in DEGENERATE}
    return ", ".join(f"{count} of {n} {name}" for name, count in counts.items() if count) or "none"


def _exam_shift(result: Accuracy) -> str:
    """'medical exam accuracy 25.3% → 29.0%, +3.7 points [+1.9, +5.5] over 1501 questions (chance 25.0%)'."""
    return (f"{result.name} exam accuracy {result.base:.1f}% → {result.tuned:.1f}%, {result.difference_text()} over "
            f"{result.n} questions (chance {result.chance:.1f}%)")


def _moved(result: Accuracy | Preference | None) -> str:
    """'up', 'down' or '' (no reliable change, or nothing measured)."""
    d = None if result is None else result.difference
    if d is None or not d.reliable:
        return ""
    return "up" if d.mean > 0 else "down"


def knowledge_sentences(knowledge: Knowledge) -> list[str]:
    """What the exam says: medicine learned or lost, general knowledge kept or forgotten."""
    medical, general = knowledge.group("medical"), knowledge.group("general")
    out = []
    for result, up, down in ((medical, "knows more medicine", "knows less medicine"),
                             (general, "general knowledge improved", "forgot general knowledge")):
        if result is None:
            continue
        few_questions = f" (fewer than {FEW_PROMPTS} questions: too few to tell)" if result.n < FEW_PROMPTS else ""
        said = {"up": up, "down": down}.get(_moved(result), f"no reliable change in {result.name} knowledge")
        out.append(f"{said}: {_exam_shift(result)}{few_questions}")
    if general is None:
        out.append("forgetting not checked: the benchmark has no general subjects (add --benchmark with some, "
                   "e.g. CMMLU's)")
    return out


def _losses(knowledge: Knowledge | None) -> list[str]:
    """The knowledge the fine-tune lost, each with its figure: 'forgot general knowledge (-4.1 points [...])'."""
    if knowledge is None:
        return []
    lost = []
    for name, words in (("medical", "knows less medicine"), ("general", "forgot general knowledge")):
        result = knowledge.group(name)
        if _moved(result) == "down":
            lost.append(f"{words} ({result.difference_text()})")
    return lost


def review_sentence(review: Review) -> str:
    """What the reviewers said: 'reviewers prefer the fine-tuned answers: 68% [55%, 80%] of 27 prompts ...'."""
    pref = review.overall
    if pref is None:
        return f"no blind rating yet: all {len(review.ratings)} ratings were given with the sides' names shown"
    said = {"up": "reviewers prefer the fine-tuned answers", "down": "reviewers prefer the base answers"}.get(
        _moved(pref), "no reliable preference between the answers")
    people = f"{len(review.reviewers)} reviewer{'s' if len(review.reviewers) > 1 else ''}"
    ties = f"{pref.ties} tie{'s' if pref.ties != 1 else ''}"
    return (f"{said}: fine-tuned preferred {pref.share_text()} over {pref.prompts} rated prompts ({pref.tuned} "
            f"ratings for fine-tuned, {ties}, {pref.base} for base; {people}, ties count half)")


def decide(n: int, metrics: dict[str, MetricResult], rouge_wtl: tuple | None, flags: Both[list[list[str]]],
           degenerate: Both[int], knowledge: Knowledge | None = None, review: Review | None = None) -> Verdict:
    """The verdict from the comparison's numbers.

    n: prompts compared. metrics: by metric key, both sides' means and the paired difference (None
    when not measured). rouge_wtl: ROUGE-L wins/ties/losses or None without references. flags:
    each answer's flags, per side. degenerate: degenerate answers, per side. knowledge: the exam's
    results, or None without one. review: the reviewers' blind preferences, or None. A fine-tune
    that lost knowledge, or whose answers reviewers like less, is never plainly HELPED.
    """
    sentences: list[str] = []
    broken = degenerate.tuned >= DEGENERATE_SHARE * n  # even if the base's answers are as bad
    if broken:
        sentences.append(f"fine-tuned answers degenerate: {_flag_counts(flags.tuned, n)} "
                         f"(base: {_flag_counts(flags.base, n)}); no score below counts as an improvement")
    elif degenerate.tuned or degenerate.base:
        sentences.append(f"degenerate answers: base {_flag_counts(flags.base, n)}; "
                         f"fine-tuned {_flag_counts(flags.tuned, n)}")
    caveat = " (not an improvement: the fine-tuned answers degenerate)" if broken else ""

    rouge = metrics["rougeL"].difference
    if rouge is not None and rouge_wtl is not None:
        wins, ties, losses = rouge_wtl
        if rouge.reliable and rouge.mean > 0:
            sentences.append(f"fine-tuned is closer to the reference answers: ROUGE-L {rouge.text(ROUGE_SCALE)}, "
                             f"wins {wins} of {rouge.n}{caveat}")
        elif rouge.reliable:
            sentences.append(f"fine-tuned is further from the reference answers: ROUGE-L {rouge.text(ROUGE_SCALE)}, "
                             f"loses {losses} of {rouge.n}")
        else:
            sentences.append(f"no reliable difference in closeness to the reference answers: ROUGE-L {rouge.text(ROUGE_SCALE)}; "
                             f"wins {wins}, ties {ties}, losses {losses} of {rouge.n}")
    ppl = metrics["ppl"].difference
    if ppl is not None:
        before, after = metrics["ppl"].base.mean, metrics["ppl"].tuned.mean
        shift = f"perplexity {number(before)} → {number(after)}, {ppl.text(max(before, after))}"
        if ppl.reliable and ppl.mean < 0:
            sentences.append(f"fine-tuned finds the reference answers more likely: {shift}{caveat}")
        elif ppl.reliable:
            sentences.append(f"fine-tuned finds the reference answers less likely: {shift}")
        else:
            sentences.append(f"no reliable difference in reference perplexity: {shift}")
    chars = metrics["chars"].difference
    if chars is not None and chars.reliable:
        before, after = metrics["chars"].base.mean, metrics["chars"].tuned.mean
        sentences.append(f"fine-tuned answers are {'longer' if chars.mean > 0 else 'shorter'}: "
                         f"{number(before)} → {number(after)} characters on average, "
                         f"{chars.text(max(before, after))}")
    truncated = sum("truncated" in f for f in flags.tuned)
    if truncated >= DEGENERATE_SHARE * n:
        sentences.append(f"{truncated} of {n} fine-tuned answers were cut off at the token limit; raise "
                         "--max-new-tokens to score whole answers")
    if review is not None:
        sentences.insert(1 if broken else 0, review_sentence(review))
    if knowledge is not None:
        sentences += knowledge_sentences(knowledge)
    if n < FEW_PROMPTS:
        sentences.append(f"only {n} prompts: too few to call any difference reliable; compare on {FEW_PROMPTS} or "
                         "more (--num-samples 0 takes the whole eval split, --data FILE another set)")

    if broken:
        return Verdict("NOT HELPED: the fine-tuned model's answers degenerate", sentences)
    if rouge is None:
        answers = "CANNOT TELL: no reference answers to judge against; read the answers side by side"
    elif n < FEW_PROMPTS:
        answers = f"CANNOT TELL: {n} prompts are too few; compare on {FEW_PROMPTS} or more"
    elif rouge.reliable and rouge.mean > 0:
        answers = "HELPED: fine-tuned answers are closer to the reference answers"
    elif rouge.reliable:
        answers = "HURT: fine-tuned answers are further from the reference answers"
    else:
        answers = "NO RELIABLE DIFFERENCE from the base model on these prompts"
    return Verdict(_headline(answers, knowledge, review), sentences)


def _headline(answers: str, knowledge: Knowledge | None, review: Review | None) -> str:
    """The headline from what the answers alone say (`answers`), the exam and the reviewers: gains
    alone are HELPED, losses alone HURT, both MIXED; without either, what the answers say."""
    gains, losses = [], list(_losses(knowledge))
    if answers.startswith("HELPED"):
        gains.append("answers closer to the references")
    elif answers.startswith("HURT"):
        losses.insert(0, "answers further from the references")
    medical = None if knowledge is None else knowledge.group("medical")
    if _moved(medical) == "up":
        gains.append(f"knows more medicine ({medical.difference_text()})")
    if review is not None and review.overall is not None and _moved(review.overall):
        preferred = "fine-tuned" if _moved(review.overall) == "up" else "base"
        said = f"reviewers prefer the {preferred} answers ({review.overall.share_text()} fine-tuned)"
        (gains if preferred == "fine-tuned" else losses).insert(0, said)
    if (gains, losses) in (([], []), (["answers closer to the references"], []),
                           ([], ["answers further from the references"])):
        return answers  # the answers alone decide, in their own words
    if gains and losses:
        return f"MIXED: {' and '.join(gains)}, but {' and '.join(losses)}"
    if losses:
        return f"HURT: {' and '.join(losses)}"
    rest = answers.split(": ", 1)[1] if answers.startswith("CANNOT TELL") else \
        "no reliable difference from the references" if answers.startswith("NO RELIABLE") else ""
    return f"HELPED: {' and '.join(gains)}" + (f"; {rest}" if rest else "")
