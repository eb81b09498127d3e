"""Measure how well glmtune.data.reading splits real seed lines into question and answer.

Each row of edge_cases.jsonl holds a raw seed-format ``line`` and its true
``title``, ``ask`` and ``answer``; the prediction counts as exact when it equals
the truth after the same normalisation (clean_text / join_question).

    python bench/split_accuracy.py

Writes bench/results/split_accuracy.json (tracked; it names the data file relative to the repo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glmtune.data.reading import clean_text, join_question, parse_line  # noqa: E402


def score_rows(rows: list[dict]) -> dict:
    rejected: Counter[str] = Counter()
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        groups = ["all", *row.get("categories", [])]
        truth = (join_question(row["title"], row["ask"]), clean_text(row["answer"]))
        try:
            question, answer = parse_line(row["line"])
        except ValueError as err:
            rejected[str(err)] += 1
            question = answer = None
        hits = {
            "rows": 1,
            "parsed": question is not None,
            "question": question == truth[0],
            "answer": answer == truth[1],
        }
        hits["both"] = hits["question"] and hits["answer"]
        for group in groups:
            totals[group].update({key: int(value) for key, value in hits.items()})
    return {
        "rows": totals["all"]["rows"],
        "parsed": totals["all"]["parsed"],
        "rejected": dict(rejected),
        "by_group": {
            group: {
                "rows": t["rows"],
                **{f"{key}_pct": round(100 * t[key] / t["rows"], 1) for key in ("question", "answer", "both")},
            }
            for group, t in sorted(totals.items(), key=lambda item: (item[0] != "all", -item[1]["rows"]))
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "realdata" / "edge_cases.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "split_accuracy.json")
    args = parser.parse_args()

    with open(args.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # Relative to the repo: a rerun on another machine rewrites the tracked result only where its numbers change.
    result = {"data": os.path.relpath(args.data.resolve(), REPO), **score_rows(rows)}

    print(f"rows {result['rows']}  parsed {result['parsed']}  rejected {result['rows'] - result['parsed']}")
    for reason, count in sorted(result["rejected"].items(), key=lambda item: -item[1]):
        print(f"  {count:4d}  {reason}")
    print(f"\n{'rows':>5s} {'question%':>10s} {'answer%':>8s} {'both%':>6s}  group (mess category)")
    for group, g in result["by_group"].items():
        print(f"{g['rows']:5d} {g['question_pct']:10.1f} {g['answer_pct']:8.1f} {g['both_pct']:6.1f}  {group}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
