"""Prompts the adapter saw in training: left out of a comparison on the training data, refused when
nothing else is left, flagged when given by hand, and unchecked (said so) for a run from before the
prompt hashes."""

import json
import shutil

import pytest

from glmtune.comparison.job import Comparison, Prompts, compare
from glmtune.core.config import CompareConfig
from glmtune.core.errors import DataError
from glmtune.data.reading import read_dataset
from glmtune.training.runs import RunRecord


def comparison(adapter, tmp_path, **settings) -> Prompts:
    """The prompts a comparison of `adapter` chooses (no model loaded yet)."""
    config = CompareConfig(adapter=adapter, output=tmp_path / "comparison", **settings)
    config.validate()
    job = Comparison(config)
    return job.load_prompts(job.load_run())


def held_out(run) -> list[str]:
    return [ex.question for ex in read_dataset(run / RunRecord.load(run).resolved.eval_file).examples]


def training_questions(run, data_file) -> list[str]:
    evaluated = set(held_out(run))
    return [ex.question for ex in read_dataset(data_file).examples if ex.question not in evaluated]


def test_comparing_on_the_training_data_leaves_out_what_the_adapter_saw(trained, data_file, tmp_path):
    run, _ = trained
    config = CompareConfig(adapter=run, output=tmp_path / "comparison", data=data_file, max_new_tokens=2)
    config.validate()
    job = compare(config)
    said = "22 of 24 prompts were seen in training and are left out"
    assert [ex.question for ex, _ in job.prompts.items] == held_out(run)
    assert job.summary[0].startswith("VERDICT (2 prompts)") and f"  - {said}" in job.summary
    report = json.loads((job.output / "chatglm_comparison.json").read_text(encoding="utf-8"))
    assert report["settings"]["seen_in_training"] == said
    assert said in (job.output / "chatglm_comparison.log").read_text(encoding="utf-8")
    default = comparison(run, tmp_path / "eval")  # the eval split the run held out
    assert len(default.items) == 2 and default.overlap == "0 of 2 prompts were seen in training"


def test_only_prompts_seen_in_training_are_refused_and_ad_hoc_ones_flagged(trained, data_file, tmp_path):
    run, _ = trained
    seen = training_questions(run, data_file)
    only_seen = tmp_path / "seen.jsonl"
    only_seen.write_text("".join(json.dumps({"question": q, "answer": "好。"}, ensure_ascii=False) + "\n"
                                 for q in seen[:3]), encoding="utf-8")
    with pytest.raises(DataError, match=r"seen.jsonl: all 3 prompts were seen in training.*held-out prompts"):
        comparison(run, tmp_path, data=only_seen)
    job = comparison(run, tmp_path, prompt=["头痛怎么办？", f"  {seen[0]}\n"])  # whitespace aside, the same
    assert job.overlap == "1 of 2 prompts were seen in training and are kept but flagged"
    assert job.flagged == [f"--prompt 2 ({f'  {seen[0]}'[:30]}) was seen in training: its answers are not held-out"]


def test_a_run_from_before_the_prompt_hashes_is_compared_with_the_overlap_unchecked(trained, data_file, tmp_path):
    run, _ = trained
    old = tmp_path / "old-run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("checkpoint-*", "comparison*", "train_prompts.sha256"))
    job = comparison(old, tmp_path, data=data_file)
    assert len(job.items) == 24 and "could not be checked" in job.overlap
