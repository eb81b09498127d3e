"""Scoring base vs fine-tuned answers: per-answer metrics and flags, the paired aggregate with
intervals, per-department results, and the comparison's console table, log and JSON report."""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.files import write_atomic
from ..core.terminal import printable
from .metrics import (FLAGS, Lexicon, answer_flags, change_rate, char_bleu4, char_len, distinct_n, is_degenerate,
                      prompt_overlap, rouge_zh, summarize)
from .verdict import Interval, Verdict, decide, number, paired_interval, wins_ties_losses

SIDES = ("base", "tuned")
HIGHER, LOWER = "higher", "lower"
# (key, label, which direction is better; None where neither is: longer is not better, nor shorter)
METRICS = [
    ("rougeL", "ROUGE-L F vs reference", HIGHER),
    ("rouge1", "ROUGE-1 F vs reference", HIGHER),
    ("rouge2", "ROUGE-2 F vs reference", HIGHER),
    ("bleu4", "char BLEU-4 vs reference", HIGHER),
    ("ppl", "reference perplexity", LOWER),
    ("term_per_100", "medical terms / 100 chars", HIGHER),
    ("term_distinct", "distinct medical terms", HIGHER),
    ("chars", "output length (chars)", None),
    ("tokens", "output length (tokens)", None),
    ("overlap_word", "prompt overlap (jieba words)", None),
    ("overlap_bigram", "prompt overlap (char bigrams)", None),
    ("latency_s", "latency per answer (s)", LOWER),
    ("ttft_s", "time to first token (s)", LOWER),
    ("decode_tok_s", "decode speed per answer (tok/s)", HIGHER),
]
SCORING_NOTE = ("ROUGE on jieba words and BLEU-4 on characters, both with punctuation and symbols removed; "
                "intervals: 95% percentile bootstrap over prompts of the paired difference tuned - base")

if TYPE_CHECKING:  # generation loads torch; scoring runs without it
    from .generation import Generated


@dataclass
class Sample:
    prompt: str
    reference: str | None
    answers: dict[str, Generated]
    ppl: dict[str, float | None] = field(default_factory=dict)
    department: str | None = None


def score_answer(sample: Sample, side: str, lexicon: Lexicon) -> dict:
    answer = sample.answers[side]
    density = lexicon.term_density(answer.text)
    overlap = prompt_overlap(sample.prompt, answer.text, lexicon.segment)
    decode_s = answer.latency_s - answer.ttft_s
    row = {
        "answer": answer.text, "flags": answer_flags(answer.text, answer.stopped),
        "chars": char_len(answer.text), "tokens": answer.new_tokens,
        "term_per_100": density.per_100_chars, "term_distinct": density.distinct,
        "overlap_word": overlap.word, "overlap_bigram": overlap.bigram,
        "latency_s": answer.latency_s, "ttft_s": answer.ttft_s,
        "decode_tok_s": (answer.new_tokens - 1) / decode_s if answer.new_tokens > 1 and decode_s > 0 else None,
        "ppl": sample.ppl.get(side), "rouge1": None, "rouge2": None, "rougeL": None, "bleu4": None,
    }
    if sample.reference is not None:
        rouge = rouge_zh(answer.text, sample.reference, lexicon.segment)
        row |= {"rouge1": rouge["rouge-1"], "rouge2": rouge["rouge-2"], "rougeL": rouge["rouge-l"],
                "bleu4": char_bleu4(answer.text, sample.reference)}
    return row


def score(samples: list[Sample], lexicon: Lexicon) -> tuple[list[dict], dict]:
    """Per-prompt rows and the aggregate: per metric both sides' summaries and the paired
    difference with its interval; flags, distinct-n, per-department results and the verdict."""
    rows = []
    for i, sample in enumerate(samples):
        per_side = {side: score_answer(sample, side, lexicon) for side in SIDES}
        b, t = per_side["base"], per_side["tuned"]
        rows.append({
            "index": i, "prompt": sample.prompt, "reference": sample.reference, "department": sample.department,
            **per_side,
            "change": {"chars": change_rate(b["chars"], t["chars"]),
                       "rougeL": None if b["rougeL"] is None else t["rougeL"] - b["rougeL"]},
        })
    metrics, intervals = {}, {}
    for key, label, better in METRICS:
        base, tuned = ([r[side][key] for r in rows] for side in SIDES)
        intervals[key] = interval = paired_interval(base, tuned)
        metrics[key] = {"label": label, "better": better, "base": summarize(base), "tuned": summarize(tuned),
                        "difference": asdict(interval) if interval else None}
    flags = {side: [r[side]["flags"] for r in rows] for side in SIDES}
    degenerate = {side: sum(is_degenerate(f) for f in flags[side]) for side in SIDES}
    has_reference = any(r["reference"] is not None for r in rows)
    wtl = wins_ties_losses(*([r[side]["rougeL"] for r in rows] for side in SIDES)) if has_reference else None
    verdict = decide(len(rows), intervals, {key: (m["base"]["mean"], m["tuned"]["mean"]) for key, m in metrics.items()},
                     wtl, flags, degenerate)
    aggregate = {
        "prompts": len(rows), "verdict": asdict(verdict), "metrics": metrics,
        "flags": {side: {flag: sum(flag in f for f in flags[side]) for flag in FLAGS} for side in SIDES},
        "degenerate": degenerate, "rougeL_wins_ties_losses": wtl,
        "distinct": {side: {"distinct1": distinct_n([r[side]["answer"] for r in rows], 1),
                            "distinct2": distinct_n([r[side]["answer"] for r in rows], 2)} for side in SIDES},
        "departments": by_department(rows) if has_reference else [],
    }
    return rows, aggregate


def by_department(rows: list[dict]) -> list[dict]:
    """ROUGE-L per department (where the data names one), largest first."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["department"]:
            groups.setdefault(r["department"], []).append(r)
    out = []
    for name, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        base, tuned = ([r[side]["rougeL"] for r in members] for side in SIDES)
        interval = paired_interval(base, tuned)
        out.append({"department": name, "n": len(members), "base": summarize(base)["mean"],
                    "tuned": summarize(tuned)["mean"], "difference": asdict(interval) if interval else None,
                    "wins_ties_losses": wins_ties_losses(base, tuned)})
    return out


def interval_text(d: dict, scale: float) -> str:
    """An interval as the JSON report keeps it (a dict), in Interval.text's words."""
    return Interval(**d).text(scale)


def verdict_lines(aggregate: dict) -> list[str]:
    verdict = Verdict(**aggregate["verdict"])
    return [f"VERDICT ({aggregate['prompts']} prompts): {verdict.headline}", *(f"  - {s}" for s in verdict.sentences)]


METRIC_COLUMNS = ("metric", "better", "base", "tuned", "tuned - base [95% CI]", "rel.")
DEPARTMENT_COLUMNS = ("department", "n", "ROUGE-L base", "tuned", "tuned - base [95% CI]", "wins/ties/losses")


def metric_rows(aggregate: dict) -> list[tuple[str, ...]]:
    """Every measured metric as METRIC_COLUMNS cells: its direction, both means, the paired
    difference with its interval, and that difference relative to the base mean."""
    rows = []
    for m in aggregate["metrics"].values():
        b, t, d = m["base"]["mean"], m["tuned"]["mean"], m["difference"]
        if b is None and t is None:
            continue
        rel = f"{100 * d['mean'] / b:+.0f}%" if d is not None and b else ""
        rows.append((m["label"], m["better"] or "-", number(b, scale_of(m)), number(t, scale_of(m)),
                     difference_text(m), rel))
    return rows


def scale_of(metric: dict) -> float:
    """The size of a metric's means, which sets how many decimals its figures get."""
    return max(abs(metric["base"]["mean"] or 0), abs(metric["tuned"]["mean"] or 0))


def difference_text(metric: dict) -> str:
    """A metric's paired difference and interval as the tables and the chart write it."""
    return "-" if metric["difference"] is None else interval_text(metric["difference"], scale_of(metric))


def department_rows(aggregate: dict) -> list[tuple[str, ...]]:
    """ROUGE-L per department as DEPARTMENT_COLUMNS cells."""
    return [(dep["department"], str(dep["n"]), number(dep["base"], 0.1), number(dep["tuned"], 0.1),
             "-" if dep["difference"] is None else interval_text(dep["difference"], 0.1),
             "/".join(map(str, dep["wins_ties_losses"]))) for dep in aggregate["departments"]]


def flag_line(aggregate: dict) -> str:
    flags = aggregate["flags"]
    return "answers flagged (base / tuned): " + ", ".join(
        f"{flag} {flags['base'][flag]}/{flags['tuned'][flag]}" for flag in FLAGS)


def distinct_line(aggregate: dict) -> str:
    d = aggregate["distinct"]
    return (f"distinct-1 / distinct-2 (corpus): base {d['base']['distinct1']:.3f} / {d['base']['distinct2']:.3f}, "
            f"tuned {d['tuned']['distinct1']:.3f} / {d['tuned']['distinct2']:.3f}")


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


def metric_table(aggregate: dict) -> list[str]:
    return [*text_table(METRIC_COLUMNS, metric_rows(aggregate)), flag_line(aggregate), distinct_line(aggregate)]


def department_table(aggregate: dict) -> list[str]:
    rows = department_rows(aggregate)
    return text_table(DEPARTMENT_COLUMNS, rows, rule=False) if rows else []


def timing_lines(timing: dict) -> list[str]:
    warm = "compile and warm-up" if timing["compiled"] else "warm-up"
    lines = [f"weights: {timing['weights']}", f"decoding: static KV cache, {timing['decoding']}; {warm} "
             f"{timing['warm_up_s']:.1f} s before the base side, not in the figures below"]
    for side in SIDES:
        s = timing[side]
        peak = "n/a" if s["peak_gpu_gib"] is None else f"{s['peak_gpu_gib']:.2f} GiB"
        lines.append(f"{side:5} generation: batch time {s['wall_s']:.1f} s for {s['new_tokens']} new tokens "
                     f"({s['tok_per_s']:.1f} tok/s over all prompts), peak GPU memory {peak}")
    return lines


def summary_lines(aggregate: dict, timing: dict, notes: tuple[str, ...] = ()) -> list[str]:
    """What the console shows and the log opens with: verdict (with `notes` on what it stands on),
    metrics, departments, timing."""
    departments = department_table(aggregate)
    return [*verdict_lines(aggregate), *(f"  - {n}" for n in notes), "", *metric_table(aggregate),
            *([""] + departments if departments else []), "", *timing_lines(timing)]


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def write_log(path: Path, settings: dict, summary: list[str], rows: list[dict], n_examples: int) -> None:
    out = ["ChatGLM3 fine-tune comparison: base (adapter disabled) vs fine-tuned (adapter on)", "",
           *summary, "", f"scoring: {SCORING_NOTE}", "", "settings:"]
    out += [f"  {k}: {v}" for k, v in settings.items()]
    out.append("")
    for r in rows[:n_examples]:
        department = f" ({r['department']})" if r["department"] else ""
        out += [f"=== example {r['index'] + 1}{department} ===", f"[prompt] {printable(r['prompt'])}"]
        if r["reference"] is not None:
            out.append(f"[reference] {printable(r['reference'])}")
        for side in SIDES:
            s = r[side]
            scores = f"{s['chars']} chars" + ("" if s["rougeL"] is None else f", ROUGE-L {s['rougeL']:.3f}")
            flags = f", flagged: {' '.join(s['flags'])}" if s["flags"] else ""
            out.append(f"[{side}] ({scores}{flags}) {printable(s['answer']) or '(empty)'}")
        out.append("")
    write_atomic(path, "\n".join(out) + "\n")


def write_report(path: Path, settings: dict, aggregate: dict, timing: dict, rows: list[dict]) -> None:
    payload = {"settings": settings, "scoring": SCORING_NOTE, "aggregate": aggregate, "timing": timing,
               "samples": rows}
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


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


def side_by_side(rows: list[dict], width: int) -> list[str]:
    """Every prompt, then base and fine-tuned answers in two columns of a `width`-column console."""
    column = max(20, (width - 3) // 2)
    out = []
    for r in rows:
        out += ["", f"[{r['index'] + 1}] {printable(r['prompt'])}"]
        left = _wrap(f"base: {r['base']['answer'] or '(empty)'}", column)
        right = _wrap(f"fine-tuned: {r['tuned']['answer'] or '(empty)'}", column)
        for a, b in zip(left + [""] * (len(right) - len(left)), right + [""] * (len(left) - len(right))):
            out.append(a + " " * (column - display_width(a)) + " │ " + b)
        flags = [f"{side}: {' '.join(r[side]['flags'])}" for side in SIDES if r[side]["flags"]]
        if flags:
            out.append("flagged " + "; ".join(flags))
    return out
