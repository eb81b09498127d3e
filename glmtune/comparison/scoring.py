"""Scoring base vs fine-tuned answers: per-answer metrics and flags, the paired aggregate with
intervals, per-department results, and the comparison's console table, log and JSON report."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses
import json
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.files import write_atomic
from ..core.terminal import printable
from .metrics import (FLAGS, Lexicon, answer_flags, change_rate, char_bleu4, char_len, distinct_n, is_degenerate,
                      prompt_overlap, rouge_zh, summarize)
from .report import (METRICS, NO_BENCHMARK_SETTING, SCORING_NOTE, SIDES, Accuracy, Aggregate, Answer, Both, Change, DepartmentResult,
                     Distinct, Knowledge, MetricResult, Preference, Report, Review, Row, Stats, Timing)
from .verdict import ROUGE_SCALE, batch_difference, decide, number, paired_interval, wins_ties_losses

if TYPE_CHECKING:  # generation loads torch; scoring runs without it
    from .generation import Generated


@dataclass
class Sample:
    prompt: str
    reference: str | None
    answers: dict[str, Generated]
    ppl: dict[str, float | None] = field(default_factory=dict)
    department: str | None = None


def score_answer(sample: Sample, side: str, lexicon: Lexicon) -> Answer:
    """One side's answer with its flags and its value of every metric in METRICS."""
    answer = sample.answers[side]
    density = lexicon.term_density(answer.text)
    overlap = prompt_overlap(sample.prompt, answer.text, lexicon.segment)
    decode_s = answer.latency_s - answer.ttft_s
    scores = {
        "chars": char_len(answer.text), "tokens": answer.new_tokens,
        "term_per_100": density.per_100_chars, "term_distinct": density.distinct,
        "overlap_word": overlap.word, "overlap_bigram": overlap.bigram,
        "latency_s": answer.latency_s, "ttft_s": answer.ttft_s,
        "decode_tok_s": (answer.new_tokens - 1) / decode_s if answer.new_tokens > 1 and decode_s > 0 else None,
        "ppl": sample.ppl.get(side), "rouge1": None, "rouge2": None, "rougeL": None, "bleu4": None,
    }
    if sample.reference is not None:
        rouge = rouge_zh(answer.text, sample.reference, lexicon.segment)
        scores |= {"rouge1": rouge["rouge-1"], "rouge2": rouge["rouge-2"], "rougeL": rouge["rouge-l"],
                   "bleu4": char_bleu4(answer.text, sample.reference)}
    return Answer(answer.text, answer_flags(answer.text, answer.stopped), scores)


def score(samples: list[Sample], lexicon: Lexicon, one_per_batch: bool = False,
          knowledge: Knowledge | None = None) -> tuple[list[Row], Aggregate]:
    """Per-prompt rows and the aggregate: per metric both sides' summaries and the paired
    difference with its interval; flags, distinct-n, per-department results and the verdict (which
    weighs the knowledge check too, where one ran).
    one_per_batch: every prompt had a generate() call of its own, so its timing is its own and gets
    an interval too; else the timing metrics are batch figures."""
    rows = []
    for i, sample in enumerate(samples):
        answers = Both.of(lambda side: score_answer(sample, side, lexicon))
        b, t = answers.base.scores, answers.tuned.scores
        change = Change(chars=change_rate(b["chars"], t["chars"]),
                        rougeL=None if b["rougeL"] is None else t["rougeL"] - b["rougeL"])
        rows.append(Row(i, sample.prompt, sample.reference, sample.department, answers, change))
    metrics = {}
    for metric in METRICS:
        values = Both.of(lambda side: [r.answers[side].scores[metric.key] for r in rows])
        differ = batch_difference if metric.batched and not one_per_batch else paired_interval
        metrics[metric.key] = MetricResult(metric.label, metric.better, Stats(**summarize(values.base)),
                                           Stats(**summarize(values.tuned)), differ(values.base, values.tuned))
    flags = Both.of(lambda side: [r.answers[side].flags for r in rows])
    degenerate = Both.of(lambda side: sum(is_degenerate(f) for f in flags[side]))
    has_reference = any(r.reference is not None for r in rows)
    rouge = Both.of(lambda side: [r.answers[side].scores["rougeL"] for r in rows])
    wtl = wins_ties_losses(rouge.base, rouge.tuned) if has_reference else None
    verdict = decide(len(rows), metrics, wtl, flags, degenerate, knowledge)
    texts = Both.of(lambda side: [r.answers[side].text for r in rows])
    aggregate = Aggregate(
        prompts=len(rows), verdict=verdict, metrics=metrics,
        flags=Both.of(lambda side: {flag: sum(flag in f for f in flags[side]) for flag in FLAGS}),
        degenerate=degenerate, rougeL_wins_ties_losses=wtl,
        distinct=Both.of(lambda side: Distinct(distinct_n(texts[side], 1), distinct_n(texts[side], 2))),
        departments=by_department(rows) if has_reference else [], knowledge=knowledge,
    )
    return rows, aggregate


def by_department(rows: list[Row]) -> list[DepartmentResult]:
    """ROUGE-L per department (where the data names one), largest first."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.department:
            groups.setdefault(r.department, []).append(r)
    out = []
    for name, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        base, tuned = ([r.answers[side].scores["rougeL"] for r in members] for side in SIDES)
        out.append(DepartmentResult(name, len(members), summarize(base)["mean"], summarize(tuned)["mean"],
                                    paired_interval(base, tuned), wins_ties_losses(base, tuned)))
    return out


def verdict_lines(aggregate: Aggregate) -> list[str]:
    verdict = aggregate.verdict
    return [f"VERDICT ({aggregate.prompts} prompts): {verdict.headline}", *(f"  - {s}" for s in verdict.sentences)]


METRIC_COLUMNS = ("metric", "better", "base", "tuned", "tuned - base [95% CI]", "rel.")
DEPARTMENT_COLUMNS = ("department", "n", "ROUGE-L base", "tuned", "tuned - base [95% CI]", "wins/ties/losses")


def metric_rows(aggregate: Aggregate) -> list[tuple[str, ...]]:
    """Every measured metric as METRIC_COLUMNS cells: its direction, both means, the paired
    difference with its interval, and that difference relative to the base mean."""
    rows = []
    for m in aggregate.metrics.values():
        b, t, d = m.base.mean, m.tuned.mean, m.difference
        if b is None and t is None:
            continue
        rel = f"{100 * d.mean / b:+.0f}%" if d is not None and b else ""
        rows.append((m.label, m.better or "-", number(b, m.scale), number(t, m.scale), m.difference_text(), rel))
    return rows


def department_rows(aggregate: Aggregate) -> list[tuple[str, ...]]:
    """ROUGE-L per department as DEPARTMENT_COLUMNS cells."""
    return [(dep.department, str(dep.n), number(dep.base, ROUGE_SCALE), number(dep.tuned, ROUGE_SCALE),
             "-" if dep.difference is None else dep.difference.text(ROUGE_SCALE),
             "/".join(map(str, dep.wins_ties_losses))) for dep in aggregate.departments]


GROUP_COLUMNS = ("exam group", "n", "chance", "base", "tuned", "tuned - base [95% CI]", "right→wrong", "wrong→right")
SUBJECT_COLUMNS = ("subject", "group", "n", "base", "tuned", "tuned - base [95% CI]", "right→wrong", "wrong→right")


def accuracy_rows(results: list[Accuracy], subjects: bool = False) -> list[tuple[str, ...]]:
    """Exam accuracy as GROUP_COLUMNS cells, or SUBJECT_COLUMNS cells with `subjects`."""
    return [(r.name, *((r.group,) if subjects else ()), str(r.n), *(() if subjects else (f"{r.chance:.1f}%",)),
             f"{r.base:.1f}%", f"{r.tuned:.1f}%", r.difference_text(), str(r.broke), str(r.fixed)) for r in results]


def knowledge_head(knowledge: Knowledge) -> str:
    return (f"knowledge check: {knowledge.questions} multiple-choice questions from {', '.join(knowledge.sources)}, "
            f"{knowledge.shots}-shot, both sides in the run's {knowledge.layout} layout; an answer is the option "
            "whose letter the model finds most likely")


def knowledge_lines(knowledge: Knowledge) -> list[str]:
    """The knowledge check's block: groups, subjects, changed answers, time."""
    fixed = sum(g.fixed for g in knowledge.groups)
    broke = sum(g.broke for g in knowledge.groups)
    seconds = knowledge.seconds
    pace = 2 * knowledge.questions / (seconds.base + seconds.tuned) if seconds.base + seconds.tuned else 0.0
    lines = [knowledge_head(knowledge), *text_table(GROUP_COLUMNS, accuracy_rows(knowledge.groups)), "",
             *text_table(SUBJECT_COLUMNS, accuracy_rows(knowledge.subjects, subjects=True), rule=False),
             f"changed answers: {len(knowledge.changed)} of {knowledge.questions} ({fixed} wrong→right, {broke} "
             f"right→wrong, {len(knowledge.changed) - fixed - broke} wrong→another wrong; each in the JSON and HTML "
             "report)",
             f"answered in {seconds.base:.1f} s (base) and {seconds.tuned:.1f} s (fine-tuned), {pace:.0f} questions/s"]
    if knowledge.unmapped:
        lines.append(f"{knowledge.unmapped} questions of subjects outside the built-in map were counted as medical; "
                     "give them a group column or field (medical or general) to change that")
    return lines


def flag_line(aggregate: Aggregate) -> str:
    flags = aggregate.flags
    return "answers flagged (base / tuned): " + ", ".join(
        f"{flag} {flags.base[flag]}/{flags.tuned[flag]}" for flag in FLAGS)


def distinct_line(aggregate: Aggregate) -> str:
    d = aggregate.distinct
    return (f"distinct-1 / distinct-2 (corpus): base {d.base.distinct1:.3f} / {d.base.distinct2:.3f}, "
            f"tuned {d.tuned.distinct1:.3f} / {d.tuned.distinct2:.3f}")


def text_table(columns: tuple[str, ...], rows: list[tuple[str, ...]], rule: bool = True) -> list[str]:
    """Rows aligned for a terminal: the first column on the left, the others on the right, the
    interval column on the left; widths by display columns (a CJK character takes two)."""
    widths = [max(display_width(cell) for cell in column) for column in zip(columns, *rows)]

    def line(cells):
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths)):
            pad = " " * (width - display_width(cell))
            out.append(cell + pad if i == 0 or "[" in columns[i] else pad + cell)
        return "  ".join(out).rstrip()

    head = line(columns)
    return [head, *(["-" * display_width(head)] if rule else []), *(line(r) for r in rows)]


def metric_table(aggregate: Aggregate) -> list[str]:
    return [*text_table(METRIC_COLUMNS, metric_rows(aggregate)), flag_line(aggregate), distinct_line(aggregate)]


def department_table(aggregate: Aggregate) -> list[str]:
    rows = department_rows(aggregate)
    return text_table(DEPARTMENT_COLUMNS, rows, rule=False) if rows else []


def timing_lines(timing: Timing) -> list[str]:
    warm = "compile and warm-up" if timing.compiled else "warm-up"
    lines = [f"weights: {timing.weights}", f"decoding: static KV cache, {timing.decoding}; {warm} "
             f"{timing.warm_up_s:.1f} s before the base side, not in the figures below"]
    for side, s in zip(SIDES, (timing.base, timing.tuned)):
        peak = "n/a" if s.peak_gpu_gib is None else f"{s.peak_gpu_gib:.2f} GiB"
        lines.append(f"{side:5} generation: batch time {s.wall_s:.1f} s for {s.new_tokens} new tokens "
                     f"({s.tok_per_s:.1f} tok/s over all prompts), peak GPU memory {peak}")
    return lines


REVIEW_COLUMNS = ("blind review", "prompts", "fine-tuned preferred [95% CI]", "fine-tuned", "ties", "base")
NO_REVIEW = ("blind review: none yet; open the HTML report, choose Blind review, rate, download the ratings, then "
             "glmtune compare --adapter ADAPTER --ratings FILE")


def preference_rows(preferences: list[Preference]) -> list[tuple[str, ...]]:
    return [(p.name, str(p.prompts), p.share_text(), str(p.tuned), str(p.ties), str(p.base)) for p in preferences]


def agreement_line(review: Review) -> str:
    a = review.agreement
    if a is None:
        return "agreement between reviewers: one reviewer, nothing to compare"
    if not a.prompts:
        return f"agreement between reviewers: no prompt was rated by all {a.reviewers}"
    value = "undefined (every rating the same)" if a.value is None else f"{a.value:.2f}"
    return f"agreement between reviewers: {a.measure} {value} over the {a.prompts} prompts all {a.reviewers} rated"


def disagreement_lines(review: Review) -> list[str]:
    if not review.disagreements:
        return ["reviewers and ROUGE-L point the same way on every rated prompt (or it has no reference)"]
    return ["reviewers and ROUGE-L disagree most on:",
            *(f"  prompt {d.index + 1}: reviewers lean {'fine-tuned' if d.reviewers > 0 else 'base'} "
              f"({d.reviewers:+.2f}), ROUGE-L favours {'fine-tuned' if d.rouge > 0 else 'base'} ({d.rouge:+.3f}): "
              f"{printable(d.prompt)[:40]}" for d in review.disagreements)]


def review_lines(review: Review) -> list[str]:
    """The blind review's block: preference overall and per department, agreement, disagreements."""
    return [review_head(review), *text_table(REVIEW_COLUMNS, preference_rows(review_table(review))),
            agreement_line(review), *disagreement_lines(review)]


def review_table(review: Review) -> list[Preference]:
    return [p for p in (review.overall, *review.departments) if p is not None]


def review_head(review: Review) -> str:
    blind = len(review.ratings) - review.revealed
    shown = (f"; {review.revealed} more given with the sides' names shown are kept but not counted"
             if review.revealed else "")
    return (f"blind review: {blind} ratings by {len(review.reviewers)} reviewer{'s' if len(review.reviewers) != 1 else ''}"
            f" ({', '.join(review.reviewers)}){shown}; a prompt scores the mean of its ratings (fine-tuned 1, tie 1/2, "
            "base 0)")


NO_BENCHMARK = ("knowledge check: not run; add --benchmark cmmlu (downloaded once) or --benchmark FOLDER to see "
                "whether it learned medicine and forgot the rest (--benchmark none hides this line)")


def summary_lines(aggregate: Aggregate, timing: Timing, notes: tuple[str, ...] = (), hint: bool = False) -> list[str]:
    """What the console shows and the log opens with: verdict (with `notes` on what it stands on),
    metrics, departments, the knowledge check (or with `hint`, how to add one), timing."""
    departments = department_table(aggregate)
    knowledge = knowledge_lines(aggregate.knowledge) if aggregate.knowledge else [NO_BENCHMARK] if hint else []
    review = review_lines(aggregate.review) if aggregate.review else [NO_REVIEW]
    return [*verdict_lines(aggregate), *(f"  - {n}" for n in notes), "", *metric_table(aggregate),
            *([""] + departments if departments else []), *([""] + knowledge if knowledge else []), "", *review, "",
            *timing_lines(timing)]


def report_summary(report: Report) -> list[str]:
    """`summary_lines` of a whole report, saying how to add a knowledge check where none was asked for."""
    return summary_lines(report.aggregate, report.timing, report.notes,
                         hint=report.settings.benchmark == NO_BENCHMARK_SETTING)


def rejudge(report: Report, review: Review) -> Report:
    """The report with the reviewers' ratings folded into its verdict: the same decision, now
    weighing what people preferred too."""
    a = report.aggregate
    flags = Both.of(lambda side: [r.answers[side].flags for r in report.rows])
    verdict = decide(a.prompts, a.metrics, a.rougeL_wins_ties_losses, flags, a.degenerate, a.knowledge, review)
    return dataclasses.replace(report, aggregate=dataclasses.replace(a, verdict=verdict, review=review))


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def write_log(path: Path, report: Report, summary: list[str], n_examples: int) -> None:
    out = ["ChatGLM3 fine-tune comparison: base (adapter disabled) vs fine-tuned (adapter on)", "",
           *summary, "", f"scoring: {SCORING_NOTE}", "", "settings:"]
    out += [f"  {k}: {v}" for k, v in asdict(report.settings).items()]
    out.append("")
    for r in report.rows[:n_examples]:
        department = f" ({r.department})" if r.department else ""
        out += [f"=== example {r.index + 1}{department} ===", f"[prompt] {printable(r.prompt)}"]
        if r.reference is not None:
            out.append(f"[reference] {printable(r.reference)}")
        for side in SIDES:
            a = r.answers[side]
            rouge = a.scores["rougeL"]
            scores = f"{a.scores['chars']} chars" + ("" if rouge is None else f", ROUGE-L {rouge:.3f}")
            flags = f", flagged: {' '.join(a.flags)}" if a.flags else ""
            out.append(f"[{side}] ({scores}{flags}) {printable(a.text) or '(empty)'}")
        out.append("")
    write_atomic(path, "\n".join(out) + "\n")


def write_report(path: Path, report: Report) -> None:
    write_atomic(path, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")


def _wrap(text: str, width: int) -> list[str]:
    """`text` cut into lines of at most `width` display columns (CJK characters take two)."""
    lines = []
    for paragraph in text.split("\n"):
        line, used = "", 0
        for ch in printable(paragraph):
            w = display_width(ch)
            if used + w > width:
                lines.append(line)
                line, used = "", 0
            line, used = line + ch, used + w
        lines.append(line)
    return lines


def side_by_side(rows: list[Row], width: int) -> list[str]:
    """Every prompt, then base and fine-tuned answers in two columns of a `width`-column console."""
    column = max(20, (width - 3) // 2)
    out = []
    for r in rows:
        out += ["", f"[{r.index + 1}] {printable(r.prompt)}"]
        left = _wrap(f"base: {r.answers.base.text or '(empty)'}", column)
        right = _wrap(f"fine-tuned: {r.answers.tuned.text or '(empty)'}", column)
        for a, b in zip(left + [""] * (len(right) - len(left)), right + [""] * (len(left) - len(right))):
            out.append(a + " " * (column - display_width(a)) + " │ " + b)
        flags = [f"{side}: {' '.join(r.answers[side].flags)}" for side in SIDES if r.answers[side].flags]
        if flags:
            out.append("flagged " + "; ".join(flags))
    return out
