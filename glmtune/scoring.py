"""Scoring base vs fine-tuned answers, and the comparison's table, log and JSON report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .generation import Generated
from .files import write_atomic
from .metrics import Lexicon, change_rate, char_bleu4, char_len, distinct_n, prompt_overlap, rouge_zh, summarize

SIDES = ("base", "tuned")
# (key, label, higher-is-better or None when neither)
METRICS = [
    ("chars", "output length (chars)", None),
    ("tokens", "output length (tokens)", None),
    ("term_per_100", "medical terms / 100 chars", True),
    ("term_distinct", "distinct medical terms", True),
    ("overlap_word", "prompt overlap (jieba words)", None),
    ("overlap_bigram", "prompt overlap (char bigrams)", None),
    ("rouge1", "ROUGE-1 F vs reference", True),
    ("rouge2", "ROUGE-2 F vs reference", True),
    ("rougeL", "ROUGE-L F vs reference", True),
    ("bleu4", "char BLEU-4 vs reference", True),
    ("ppl", "reference perplexity", False),
    ("latency_s", "latency per answer (s)", False),
]


@dataclass
class Sample:
    prompt: str
    reference: str | None
    answers: dict[str, Generated]
    ppl: dict[str, float | None] = field(default_factory=dict)


def score_answer(sample: Sample, side: str, lexicon: Lexicon) -> dict[str, float | None]:
    answer = sample.answers[side].text
    density = lexicon.term_density(answer)
    overlap = prompt_overlap(sample.prompt, answer, lexicon.segment)
    row: dict[str, float | None] = {
        "chars": char_len(answer), "tokens": sample.answers[side].new_tokens,
        "term_per_100": density.per_100_chars, "term_distinct": density.distinct,
        "overlap_word": overlap.word, "overlap_bigram": overlap.bigram,
        "latency_s": sample.answers[side].latency_s, "ppl": sample.ppl.get(side),
        "rouge1": None, "rouge2": None, "rougeL": None, "bleu4": None,
    }
    if sample.reference is not None:
        rouge = rouge_zh(answer, sample.reference, lexicon.segment)
        row |= {"rouge1": rouge["rouge-1"], "rouge2": rouge["rouge-2"], "rougeL": rouge["rouge-l"],
                "bleu4": char_bleu4(answer, sample.reference)}
    return row


def score(samples: list[Sample], lexicon: Lexicon) -> tuple[list[dict], dict]:
    """Per-sample rows and the aggregate (mean/median per metric and side, plus corpus-level numbers)."""
    rows = []
    for i, sample in enumerate(samples):
        per_side = {side: score_answer(sample, side, lexicon) for side in SIDES}
        rows.append({
            "index": i, "prompt": sample.prompt, "reference": sample.reference,
            **{side: {"answer": sample.answers[side].text, **per_side[side]} for side in SIDES},
            "change": {"chars": change_rate(per_side["base"]["chars"], per_side["tuned"]["chars"]),
                       "tokens": change_rate(per_side["base"]["tokens"], per_side["tuned"]["tokens"])},
        })
    aggregate: dict = {side: {key: summarize([r[side][key] for r in rows]) for key, _, _ in METRICS}
                       for side in SIDES}
    aggregate["change"] = {key: summarize([r["change"][key] for r in rows]) for key in ("chars", "tokens")}
    for side in SIDES:
        texts = [r[side]["answer"] for r in rows]
        aggregate[side]["distinct1"] = distinct_n(texts, 1)
        aggregate[side]["distinct2"] = distinct_n(texts, 2)
        aggregate[side]["empty_answers"] = sum(not t for t in texts)
    return rows, aggregate


def aggregate_table(aggregate: dict, timing: dict) -> list[str]:
    """The table printed on the console and at the top of the log."""
    head = f"{'metric':34} {'base mean':>10} {'tuned mean':>10} {'base med':>9} {'tuned med':>9} {'change':>9}"
    lines = [head, "-" * len(head)]

    def fmt(v):
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    for key, label, _ in METRICS:
        b, t = aggregate["base"][key], aggregate["tuned"][key]
        if b["n"] == 0 and t["n"] == 0:
            continue
        change = None
        if key in aggregate["change"]:
            change = aggregate["change"][key]["mean"]
            change = None if change is None else f"{100 * change:+.1f}%"
        elif b["mean"] is not None and t["mean"] is not None:
            change = f"{t['mean'] - b['mean']:+.4g}"
        lines.append(f"{label:34} {fmt(b['mean']):>10} {fmt(t['mean']):>10} {fmt(b['median']):>9} "
                     f"{fmt(t['median']):>9} {fmt(change):>9}")
    for key, label in (("distinct1", "distinct-1 (corpus)"), ("distinct2", "distinct-2 (corpus)"),
                       ("empty_answers", "empty answers")):
        b, t = aggregate["base"][key], aggregate["tuned"][key]
        lines.append(f"{label:34} {fmt(b):>10} {fmt(t):>10} {'':>9} {'':>9} {'':>9}")
    for side in SIDES:
        s = timing[side]
        peak = "n/a" if s["peak_gpu_gib"] is None else f"{s['peak_gpu_gib']:.2f} GiB"
        lines.append(f"{side:6} generation: {s['wall_s']:.1f} s wall, {s['new_tokens']} new tokens, "
                     f"{s['tok_per_s']:.1f} new tok/s, peak GPU memory {peak}")
    return lines


def write_log(path: Path, settings: dict, table: list[str], rows: list[dict], n_examples: int) -> None:
    out = ["ChatGLM3 fine-tune comparison: base (adapter disabled) vs fine-tuned (adapter on)", "",
           "settings:"]
    out += [f"  {k}: {v}" for k, v in settings.items()]
    out += ["", "aggregate (mean / median over prompts):", *table, ""]
    for r in rows[:n_examples]:
        out += [f"=== example {r['index'] + 1} ===", f"[prompt] {r['prompt']}"]
        if r["reference"] is not None:
            out.append(f"[reference] {r['reference']}")
        for side in SIDES:
            s = r[side]
            out.append(f"[{side}] ({s['chars']} chars, {s['term_per_100']:.2f} terms/100) {s['answer'] or '(empty)'}")
        out.append("")
    write_atomic(path, "\n".join(out) + "\n")


def write_report(path: Path, settings: dict, aggregate: dict, timing: dict, rows: list[dict]) -> None:
    payload = {"settings": settings, "aggregate": aggregate, "timing": timing, "samples": rows}
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
