"""The training job on the tiny model: a run that learns, saves, reloads and resumes; the settings and
data it refuses before a model loads; conversation data trained in the chat layout."""

import json
from pathlib import Path

import pytest
import torch

import glmtune
from glmtune.comparison.job import Comparison, TrainedRun, compare
from glmtune.core.config import CompareConfig
from glmtune.core.errors import ConfigError, DataError
from glmtune.data.reading import read_dataset
from glmtune.model.prompts import example_prompt_ids, tokenize_examples
from glmtune.model.tokenizer import load_tokenizer
from glmtune.training.job import FineTune, train
from glmtune.training.trainer import StopOnNonFiniteLoss

from conftest import LONG_SYSTEM, KillAtStep, conversations, plain_peft, tiny_config, write_jsonl


def test_nan_guard_stops_training():
    guard, control = StopOnNonFiniteLoss(), type("C", (), {"should_training_stop": False})()
    state = type("S", (), {"global_step": 7})()
    guard.on_log(None, state, control, logs={"loss": 1.5})
    assert not control.should_training_stop
    guard.on_log(None, state, control, logs={"loss": float("nan")})
    assert control.should_training_stop and guard.bad_step == 7


def test_a_lora_rank_above_the_smallest_targeted_layer_is_refused_before_the_folder(data_file, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as caught:
        FineTune(tiny_config(data_file, out, "--lora-r", "100000")).prepare()
    assert caught.value.field == "lora_r"
    assert "at most 64" in str(caught.value) and "k_proj" in str(caught.value)
    assert not out.exists()  # refused before the output folder was claimed, let alone a model loaded
    FineTune(tiny_config(data_file, tmp_path / "default")).prepare()  # the default rank passes


def test_a_system_prompt_past_max_length_is_refused_before_the_model_naming_rows_and_fix(tmp_path):
    data = conversations(tmp_path / "chats.jsonl", [LONG_SYSTEM] * 6)
    job = FineTune(tiny_config(data, tmp_path / "out", "--max-length", "64"))
    splits = job.split(job.prepare().dataset)
    with pytest.raises(DataError) as caught:
        job.tokenize(splits)
    message = str(caught.value)
    assert str(data) in message and "no training row keeps an answer token within --max-length 64" in message
    needed = int(message.split("raise --max-length to ")[1].split(",")[0])
    lines = [int(n) for n in message.split("(lines ")[1].split(":")[0].split(", ")]
    assert lines == [ex.line_no for ex in splits.train] and "shorten the system prompt" in message
    tok = load_tokenizer("tiny")
    examples = read_dataset(data).examples
    kept, stats = tokenize_examples(examples, tok, "chat", needed)  # the length it names keeps every row
    assert len(kept) == 6 and not stats.unanswered


def test_single_exchange_conversations_hold_out_eval_jsonl_and_compare_on_the_same_prompts(tmp_path):
    data = conversations(tmp_path / "chats.jsonl", [None] * 10)
    out = tmp_path / "run"
    with FineTune(tiny_config(data, out, "--eval-ratio", "0.2")) as job:
        splits = job.split(job.prepare().dataset)
    assert job.record.resolved.prompt_format == "glm3" and job.record.resolved.eval_file == "eval.jsonl"
    assert not (out / "eval.txt").exists()
    run = TrainedRun(job.record, "tiny", job.record.resolved.prompt_format, Path(), None)
    prompts = Comparison(CompareConfig(adapter=out, output=tmp_path / "c")).load_prompts(run)
    tok = load_tokenizer("tiny")
    assert ([(example_prompt_ids(tok, ex, "glm3"), reference) for ex, reference in prompts.items]
            == [(example_prompt_ids(tok, ex, "glm3"), ex.answer) for ex in splits.eval])
    assert len(prompts.items) == 2


# ---------- a real tiny run ----------

def test_run_leaves_every_output(trained):
    out, _ = trained
    for name in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "run_config.json",
                 "eval.jsonl", "train_metrics.json", "loss.png", "data_report.txt"]:
        assert (out / name).is_file(), name
    assert not list(out.rglob("README.md"))  # peft's boilerplate model card, in the run or a checkpoint
    run = json.loads((out / "run_config.json").read_text())
    assert run["settings"]["model"] == "tiny" and len(run["data_sha256"]) == 64 and run["state"] == "finished"
    assert run["resolved"]["micro_batch"] * run["resolved"]["grad_accum"] == 8
    # the seed format has no department field, so an eval split that keeps them is JSON lines
    assert run["resolved"]["prompt_format"] == "glm3" and run["resolved"]["eval_file"] == "eval.jsonl"
    assert run["versions"]["transformers"].startswith("5.")
    held_out = glmtune.read_dataset(out / "eval.jsonl").examples
    assert len(held_out) == run["resolved"]["examples"]["eval"] and all(ex.department for ex in held_out)


def test_training_lowers_loss_and_changes_lora(trained):
    out, model = trained
    history = json.loads((out / "train_metrics.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5, losses
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # peft initialises B to zero


def test_saved_adapter_reloads_to_identical_logits(trained):
    out, model = trained
    base = glmtune.load_model("tiny", quantization="nf4")
    reloaded = plain_peft(base, out)
    model.eval()
    ids = torch.arange(5, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_killed_and_resumed_run_matches_uninterrupted(data_file, tmp_path):
    flags = ("--max-steps", "6", "--save-steps", "3", "--learning-rate", "5e-3")  # crosses an epoch
    straight = train(tiny_config(data_file, tmp_path / "a", *flags)).model
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, tmp_path / "b", *flags), callbacks=[KillAtStep(4)])
    assert (tmp_path / "b" / "checkpoint-3").is_dir() and not (tmp_path / "b" / "adapter_model.safetensors").exists()
    resumed = train(tiny_config(data_file, tmp_path / "b", *flags, "--resume")).model
    a = {n: p for n, p in straight.named_parameters() if "lora_" in n}
    b = {n: p for n, p in resumed.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def test_conversation_data_trains_in_the_chat_layout_and_compares(tmp_path):
    records = [{"messages": [{"role": "system", "content": "你是医生。"},
                             {"role": "user", "content": f"第{i}天头痛。"}, {"role": "assistant", "content": "有发热吗？"},
                             {"role": "user", "content": "没有。"}, {"role": "assistant", "content": f"休息{i}天。"}]}
               for i in range(10)]
    data = write_jsonl(tmp_path / "dialogues.jsonl", records)
    out = tmp_path / "run"
    job = train(tiny_config(data, out, "--max-steps", "2", "--eval-ratio", "0.2"))
    assert job.record.resolved.prompt_format == "chat" and job.record.resolved.eval_file == "eval.jsonl"
    held_out = read_dataset(out / "eval.jsonl").examples
    assert len(held_out) == 2 and all(ex.history and ex.system == "你是医生。" for ex in held_out)
    config = CompareConfig(adapter=out, max_new_tokens=4, output=tmp_path / "c")
    assert compare(config).run.prompt_format == "chat"
    with pytest.raises(ConfigError, match="use chat"):
        train(tiny_config(data, tmp_path / "glm3", "--max-steps", "1", "--prompt-format", "glm3"))


def test_a_loss_plot_without_losses_draws_no_legend_warning(recwarn, tmp_path):
    from glmtune.training.plots import plot_losses

    plot_losses([{"step": 2, "train_runtime": 1.0}], tmp_path / "loss.png")
    assert (tmp_path / "loss.png").is_file()
    assert not [str(w.message) for w in recwarn.list]
