"""The comparison script on a tiny trained adapter: one copy of the weights, fair decoding, reports."""

import io
import json
import shutil

import pytest

import glmtune
from glmtune.comparison.generation import Decoding, generate_answers, reference_perplexity
from glmtune.comparison.job import compare, output_dir
from glmtune.comparison.scoring import NO_BENCHMARK, display_width, side_by_side
from glmtune.core import cli
from glmtune.core.config import CompareConfig
from glmtune.core.errors import ConfigError, DataError, ModelLoadError
from glmtune.data.reading import Example
from glmtune.model.prompts import encode, prompt_ids
from glmtune.training.runs import RunRecord

from conftest import compare_config, plain_peft, write_jsonl


QUESTIONS = ["头痛三天怎么办？", "孩子发烧38度要吃药吗？ 孩子2岁。", "高血压", "胃痛反酸是什么原因？ 饭后明显，已经一周。"]


@pytest.fixture(scope="module")
def tuned(trained):
    out, _ = trained
    base = glmtune.load_model("tiny", quantization="nf4")
    return plain_peft(base, out), glmtune.load_tokenizer(out)


def test_disabled_adapter_equals_plain_base_model(tuned):
    model, tok = tuned
    prompts = [prompt_ids(tok, q, "glm3") for q in QUESTIONS]
    decoding = Decoding(max_new_tokens=12)
    plain = glmtune.load_model("tiny", quantization="nf4").eval()
    expected = generate_answers(plain, tok, prompts, decoding, batch_size=4)
    with model.disable_adapter():
        got = generate_answers(model, tok, prompts, decoding, batch_size=4)
    assert [g.text for g in got] == [e.text for e in expected]
    with_adapter = generate_answers(model, tok, prompts, decoding, batch_size=4)
    assert [g.text for g in with_adapter] != [e.text for e in expected]  # the adapter does something


def test_batched_greedy_equals_one_at_a_time(tuned):
    model, tok = tuned
    prompts = [prompt_ids(tok, q, "chat") for q in QUESTIONS]
    decoding = Decoding(max_new_tokens=16)
    batched = generate_answers(model, tok, prompts, decoding, batch_size=4)
    single = generate_answers(model, tok, prompts, decoding, batch_size=1)
    assert [b.text for b in batched] == [s.text for s in single]
    assert all(b.new_tokens == 16 for b in batched)


def test_sampling_is_seeded_and_same_for_both_models(tuned):
    model, tok = tuned
    prompts = [prompt_ids(tok, q, "glm3") for q in QUESTIONS[:2]]
    a = generate_answers(model, tok, prompts, Decoding(max_new_tokens=10, do_sample=True, seed=3), batch_size=2)
    b = generate_answers(model, tok, prompts, Decoding(max_new_tokens=10, do_sample=True, seed=3), batch_size=2)
    c = generate_answers(model, tok, prompts, Decoding(max_new_tokens=10, do_sample=True, seed=4), batch_size=2)
    assert [x.text for x in a] == [x.text for x in b] != [x.text for x in c]


def test_reference_perplexity_batched_equals_single_and_drops_with_training(tuned, data_file):
    model, tok = tuned
    pairs = [Example(*line.split(",", 1), 0) for line in data_file.read_text(encoding="utf-8").splitlines()[:4]]
    rows = [encode(tok, ex, "glm3", 256) for ex in pairs]
    batched = reference_perplexity(model, rows, tok.pad_token_id, batch_size=4)
    single = reference_perplexity(model, rows, tok.pad_token_id, batch_size=1)
    assert batched == pytest.approx(single, rel=1e-4)
    with model.disable_adapter():
        base = reference_perplexity(model, rows, tok.pad_token_id, batch_size=4)
    assert all(t < b for t, b in zip(batched, base))  # trained on these very lines


def run_compare(adapter, tmp_path, **settings):
    config = CompareConfig(adapter=adapter, output=tmp_path / "comparison", **settings)
    config.validate()
    return compare(config)


def exam_file(tmp_path):
    """A knowledge check of 24 medical questions (a subject outside the built-in map) and 20 general ones."""
    medical = [{"question": f"第{i}题：阿司匹林属于哪类药物？", "options": ["抗血小板药", "抗生素", "降糖药", "利尿剂"],
                "answer": "A", "subject": "pharmacology"} for i in range(24)]
    general = [{"question": f"第{i}题：中国的首都是？", "options": ["上海", "北京"], "answer": "B", "group": "general",
                "subject": "geography"} for i in range(20)]
    return write_jsonl(tmp_path / "exam.jsonl", medical + general)


def test_compare_writes_log_json_chart_and_html_into_a_folder(trained, tmp_path):
    out, _ = trained
    exam = exam_file(tmp_path)
    job = run_compare(out, tmp_path, max_new_tokens=24, batch_size=4, benchmark=[str(exam)])
    folder = tmp_path / "comparison"
    log = (folder / "chatglm_comparison.log").read_text(encoding="utf-8")
    assert log.splitlines()[2].startswith("VERDICT (")
    for family in ["output length (chars)", "output length (tokens)", "medical terms / 100 chars",
                   "prompt overlap (jieba words)", "prompt overlap (char bigrams)", "ROUGE-L F", "char BLEU-4",
                   "reference perplexity", "latency per answer", "time to first token", "distinct-2",
                   "answers flagged (base / tuned)", "tok/s over all prompts", "punctuation and symbols removed",
                   "=== example 1 "]:
        assert family in log, family
    report = json.loads((folder / "chatglm_comparison.json").read_text(encoding="utf-8"))
    eval_examples = glmtune.read_dataset(out / job.run.record.resolved.eval_file).examples
    assert report["settings"]["prompts"] == len(eval_examples) == len(report["samples"])
    sample = report["samples"][0]
    for side in ("base", "tuned"):
        assert {"answer", "flags", "chars", "tokens", "term_per_100", "rouge1", "bleu4", "ppl", "latency_s",
                "ttft_s"} <= sample[side].keys()
        assert report["aggregate"]["metrics"]["rougeL"][side]["n"] == len(eval_examples)
    assert report["aggregate"]["metrics"]["ppl"]["better"] == "lower"
    for clock in ("latency_s", "ttft_s", "decode_tok_s"):  # the prompts of a batch share its time: no interval
        difference = report["aggregate"]["metrics"][clock]["difference"]
        assert difference.keys() == {"mean", "low", "high", "n", "batch"} and difference["batch"]
        assert difference["low"] is difference["high"] is None
    latency = next(line for line in log.splitlines() if line.startswith("latency per answer"))
    assert "(batch figure, no interval)" in latency
    assert (folder / "chatglm_comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert job.outputs == [folder / f"chatglm_comparison.{ext}" for ext in ("log", "json", "png", "html")]
    # departments come from the eval split that training wrote
    departments = {ex.department for ex in eval_examples} - {None}
    assert {d["department"] for d in report["aggregate"]["departments"]} == departments
    # the knowledge check, in the verdict, the log's block, the JSON, the HTML report
    knowledge = job.report.aggregate.knowledge
    assert [(g.name, g.n, g.chance) for g in knowledge.groups] == [("medical", 24, 25.0), ("general", 20, 50.0)]
    assert knowledge.unmapped == 24  # "pharmacology" is no subject of a known suite
    assert sum("medical exam accuracy" in s or "general exam accuracy" in s for s in job.report.aggregate.verdict.sentences) == 2
    assert "knowledge check: 44 multiple-choice questions" in log and "24 questions of subjects outside" in log
    assert report["aggregate"]["knowledge"]["groups"][1]["n"] == 20
    assert report["settings"]["benchmark"] == f"{exam}; 0-shot"
    assert "<h2>Knowledge check</h2>" in (folder / "chatglm_comparison.html").read_text(encoding="utf-8")


def test_a_rerun_numbers_its_folder_and_overwrite_replaces(trained, tmp_path):
    out, _ = trained
    first = run_compare(out, tmp_path, max_new_tokens=4, num_samples=2)
    again = run_compare(out, tmp_path, max_new_tokens=4, num_samples=2, benchmark=["none"])
    assert (first.output.name, again.output.name) == ("comparison", "comparison-2")
    # no --benchmark: one line says how to add the knowledge check; --benchmark none: not a word
    assert [NO_BENCHMARK in first.summary, NO_BENCHMARK in again.summary] == [True, False]
    # a comparison still running holds its folder: one started meanwhile numbers past it
    config = CompareConfig(adapter=out, output=tmp_path / "busy")
    busy = [output_dir(config), output_dir(config)]
    assert [folder.name for folder, _, _ in busy] == ["busy", "busy-2"]
    for _, _, held in busy:
        held.release()
    replaced = run_compare(out, tmp_path, max_new_tokens=4, num_samples=2, overwrite=True)
    assert replaced.output == first.output and not (tmp_path / "comparison-3").exists()
    (first.output / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a comparison report"):
        run_compare(out, tmp_path, max_new_tokens=4, num_samples=2, overwrite=True)


def test_ad_hoc_prompts_have_no_reference_metrics_and_print_side_by_side(trained, tmp_path):
    out, _ = trained
    job = run_compare(out, tmp_path, prompt=["头痛怎么办？", "失眠怎么办？"], max_new_tokens=8)
    report = json.loads((job.output / "chatglm_comparison.json").read_text(encoding="utf-8"))
    assert report["settings"]["prompts"] == 2
    assert report["samples"][0]["tuned"]["rouge1"] is None and report["samples"][0]["tuned"]["ppl"] is None
    assert report["aggregate"]["verdict"]["headline"].startswith("CANNOT TELL")
    lines = side_by_side(job.report.rows, 100)
    assert "[2] 失眠怎么办？" in lines and all(display_width(line) <= 100 for line in lines)
    assert any(line.startswith("base: ") and "│ fine-tuned: " in line for line in lines)


def test_missing_and_incomplete_adapter_folders(trained, tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        CompareConfig(adapter=tmp_path / "nope").validate()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="adapter_model.safetensors missing"):
        run_compare(partial, tmp_path)


def test_adapter_on_a_different_base_is_named(trained, tmp_path):
    out, _ = trained
    from glmtune.model.tiny import TINY_SHAPE, original_config, random_original_weights, write_original_checkpoint

    config = original_config(3000, **{**TINY_SHAPE, "hidden_size": 192})
    write_original_checkpoint(tmp_path / "other", config, random_original_weights(config))
    with pytest.raises(ModelLoadError, match="does not fit"):
        run_compare(out, tmp_path, base_model=str(tmp_path / "other"))


def test_empty_prompt_set_is_an_error(trained, tmp_path):
    out, _ = trained
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl"):
        run_compare(out, tmp_path, data=empty)


def test_empty_eval_split_says_how_to_get_prompts(trained, tmp_path):
    out, _ = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (run / RunRecord.load(run).resolved.eval_file).write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="the eval split is empty. Train with --eval-ratio > 0"):
        run_compare(run, tmp_path)


@pytest.mark.parametrize("terms, message", [("头痛\n\n发烧\n", "terms.txt:2: blank line"),
                                            ("头痛".encode("utf-16"), "not UTF-8 text")])
def test_a_bad_terms_file_stops_before_any_model_loads(trained, tmp_path, terms, message):
    from glmtune.comparison.job import Comparison

    path = tmp_path / "terms.txt"
    path.write_bytes(terms.encode() if isinstance(terms, str) else terms)
    job = Comparison(compare_config(trained[0], "--terms-file", str(path)))
    with pytest.raises(DataError, match=message):
        job.load_run()


def test_max_new_tokens_beyond_the_context_blames_the_flag(trained, tmp_path):
    from glmtune.comparison.job import Comparison
    from glmtune.core.config import CompareConfig
    from glmtune.core.errors import ConfigError
    from glmtune.model.tokenizer import load_tokenizer

    out, _ = trained
    context = load_tokenizer(out).model_max_length
    job = Comparison(CompareConfig(adapter=out, max_new_tokens=context + 100, output=tmp_path / "report"))
    run = job.load_run()
    prompts = job.load_prompts(run)
    with pytest.raises(ConfigError) as refused:
        job.load_model(run, prompts, None)
    assert refused.value.field == "max_new_tokens"
    assert cli.message(refused.value).startswith(f"--max-new-tokens {context + 100} leaves no room for a prompt: "
                                                 f"this model's context holds {context} tokens")
    assert not (tmp_path / "report").exists()  # refused before the report folder is claimed

    from glmtune.comparison.chat import start
    from glmtune.training.runs import RunRecord

    with pytest.raises(ConfigError, match=f"leaves no room for a prompt: this model's context holds {context}"):
        start(CompareConfig(adapter=out, chat=True, max_new_tokens=context + 100), RunRecord.load(out), "tiny",
              io.StringIO())
