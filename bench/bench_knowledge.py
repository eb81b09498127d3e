"""Does the knowledge check see real learning? On CPU, with the tiny model and ../shared's CMMLU files:
a tiny adapter is trained on 32 anatomy questions with their answers (the 8 shortest per answer
letter, so that the base, which picks one letter for everything, scores exactly 25%), then the
comparison's knowledge check runs on those questions (medical) and on high_school_physics (general,
not trained on): the medical group must rise with its interval above zero.

    python bench/bench_knowledge.py                   # seeds 1 and 2, ~1 min each on 2 cores
    python bench/bench_knowledge.py --seeds 1 2 3 42  # more seeds

The tiny model learns this slowly and by fits: its output layer is not adapted, and from the default
LoRA targets it learns only the answer's fixed tokens, so the recipe adapts only the attention's
value and output projections at a constant learning rate with no gradient clipping (the rest of
the attention stays an even average over the prompt, whose content a linear readout then learns).
Even so, some seeds stay on the loss plateau for 300 epochs: the check reports that as no reliable
change, which is what it is. Prints the knowledge block per seed and merges `knowledge_learning`
into bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glmtune.comparison.job import compare  # noqa: E402
from glmtune.comparison.scoring import knowledge_lines  # noqa: E402
from glmtune.core import cli  # noqa: E402
from glmtune.core.config import CompareConfig, TrainConfig  # noqa: E402
from glmtune.data.benchmarks import prompt_text, read_benchmark  # noqa: E402
from glmtune.training.job import train  # noqa: E402

RECIPE = ["--epochs", "300", "--batch-size", "32", "--grad-accum", "1", "--learning-rate", "1e-2",
          "--lr-scheduler", "constant", "--warmup-ratio", "0", "--max-grad-norm", "0", "--lora-r", "16",
          "--lora-alpha", "32", "--lora-dropout", "0", "--lora-target", "v_proj,o_proj", "--eval-ratio", "0",
          "--logging-steps", "1000"]


def balanced(questions, per_letter: int):
    """The shortest `per_letter` questions of each answer letter, in file order."""
    by_length = sorted(questions, key=lambda q: len(prompt_text(q, [])))
    picked = {q.id for letter in "ABCD" for q in [x for x in by_length if x.answer == letter][:per_letter]}
    return [q for q in questions if q.id in picked]


def main(args) -> None:
    cmmlu = args.shared / "benchmarks" / "cmmlu" / "test"
    if not cmmlu.is_dir():
        sys.exit(f"error: {cmmlu} is absent; pass --shared FOLDER holding benchmarks/cmmlu")
    work = Path(tempfile.mkdtemp(prefix="glmtune-knowledge-"))
    questions = balanced(read_benchmark(cmmlu / "anatomy.csv", "cmmlu").questions, 8)
    # The same questions as training data (question -> its letter) and as the exam (group medical)
    data = work / "anatomy-train.jsonl"
    data.write_text("".join(json.dumps({"question": prompt_text(q, []), "answer": q.answer}, ensure_ascii=False) + "\n"
                            for q in questions), encoding="utf-8")
    exam = work / "anatomy-exam.jsonl"
    exam.write_text("".join(json.dumps({"question": q.question, "options": q.options, "answer": q.answer,
                                        "subject": q.subject, "id": q.id}, ensure_ascii=False) + "\n"
                            for q in questions), encoding="utf-8")
    results = {}
    for seed in args.seeds:
        run = work / f"run-seed{seed}"
        config, _ = cli.parse_args(TrainConfig, "bench", ["--model", "tiny", "--data", str(data), "--output-dir",
                                                          str(run), "--seed", str(seed), *RECIPE])
        began = time.perf_counter()
        train(config)
        train_s = time.perf_counter() - began
        compared = compare(CompareConfig(adapter=run, prompt=["头痛怎么办？"], max_new_tokens=4,
                                         benchmark=[str(exam), str(cmmlu / "high_school_physics.csv")]))
        knowledge = compared.report.aggregate.knowledge
        print(f"\n=== seed {seed}: trained {train_s:.0f} s; VERDICT {compared.report.aggregate.verdict.headline}")
        print("\n".join(knowledge_lines(knowledge)), flush=True)
        results[str(seed)] = {"train_s": train_s, "headline": compared.report.aggregate.verdict.headline,
                              **{g.name: {"n": g.n, "base": g.base, "tuned": g.tuned, "mean": g.difference.mean,
                                          "low": g.difference.low, "high": g.difference.high,
                                          "reliable": g.difference.reliable} for g in knowledge.groups}}
    out = Path(args.results)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["knowledge_learning"] = {"recipe": " ".join(RECIPE), "date": time.strftime("%Y-%m-%d"),
                                    "device": "CPU", "questions": "cmmlu anatomy, 8 shortest per answer letter",
                                    "seeds": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2))
    print(f"\n{'seed':>6} {'medical base':>12} {'tuned':>6} {'tuned - base [95% CI]':>26} {'general':>20}")
    for seed, r in results.items():
        m, g = r["medical"], r["general"]
        print(f"{seed:>6} {m['base']:>11.1f}% {m['tuned']:>5.1f}% {m['mean']:>+8.1f} [{m['low']:+.1f}, "
              f"{m['high']:+.1f}] {'reliable' if m['reliable'] else '':>8} {g['base']:>6.1f}% -> {g['tuned']:.1f}%")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="training seeds, one run each")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="folder holding benchmarks/cmmlu")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "latest.json"), help="JSON output")
    main(p.parse_args())
