"""The training job on the tiny model: prompts/labels, learning, saving, resuming."""

import json

import pytest
import sentencepiece as spm
import torch
from peft import PeftModel

import glmtune
import glmtune.training.job
import glmtune.training.memory
from glmtune.data.reading import split_eval
from glmtune.core.errors import ConfigError
from glmtune.training.job import train
from glmtune.model.lora import resolve_lora_targets
from glmtune.training.memory import CheckpointPlan
from glmtune.model.prompts import IGNORE_INDEX, encode_example
from glmtune.training.trainer import StopOnNonFiniteLoss

from conftest import KillAtStep, tiny_config

QUESTION, ANSWER = "头痛三天怎么办？ 女，30岁，太阳穴胀痛。", "多为紧张性头痛，注意休息；若剧烈头痛伴呕吐请立即就医。"
GMASK, SOP, USER, ASSISTANT = 64790, 64792, 64795, 64796

# ---------- prompts and labels ----------

def test_glm3_prompt_and_labels_golden(real_tokenizer_dir):
    tok = glmtune.load_tokenizer(real_tokenizer_dir)
    sp = spm.SentencePieceProcessor(model_file=str(real_tokenizer_dir / "tokenizer.model"))
    enc = encode_example(tok, QUESTION, ANSWER, "glm3", 1024)
    prompt = [GMASK, SOP] + sp.encode(f"[Round 1]\n\n问：{QUESTION}\n\n答：")
    answer = sp.encode(ANSWER) + [2]
    assert enc.input_ids == prompt + answer
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert not enc.truncated
    with_prompt = encode_example(tok, QUESTION, ANSWER, "glm3", 1024, train_on_prompt=True)
    assert with_prompt.labels == with_prompt.input_ids


def test_chat_prompt_and_labels_golden(real_tokenizer_dir):
    tok = glmtune.load_tokenizer(real_tokenizer_dir)
    sp = spm.SentencePieceProcessor(model_file=str(real_tokenizer_dir / "tokenizer.model"))
    enc = encode_example(tok, QUESTION, ANSWER, "chat", 1024)
    prompt = [GMASK, SOP, USER] + sp.encode("\n") + sp.encode(QUESTION) + [ASSISTANT]
    answer = sp.encode("\n") + sp.encode(ANSWER) + [2]
    assert enc.input_ids == prompt + answer
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + answer


@pytest.mark.parametrize("fmt", ["glm3", "chat"])
def test_truncation_keeps_template_and_half_the_answer(tiny_dir, fmt):
    tok = glmtune.load_tokenizer(tiny_dir)
    long_q, long_a = "头痛" * 400, "建议休息" * 400
    enc = encode_example(tok, long_q, long_a, fmt, 128)
    assert len(enc.input_ids) == 128 and enc.truncated
    assert enc.prompt_len <= 64
    assert enc.input_ids[-1] != tok.eos_token_id  # a cut answer is not taught to stop
    assert sum(label != IGNORE_INDEX for label in enc.labels) >= 64
    tail = "\n\n答：" if fmt == "glm3" else "<|assistant|>"
    assert tok.decode(enc.input_ids[:enc.prompt_len]).endswith(tail)


def test_lora_targets_accept_chatglm_names():
    assert resolve_lora_targets("query_key_value,dense,dense_h_to_4h,dense_4h_to_h") == \
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert resolve_lora_targets("q_proj, v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="unknown module 'mlp'") as err:
        resolve_lora_targets("mlp")
    assert err.value.field == "lora_target"


def test_eval_split_is_deterministic_and_disjoint():
    items = list(range(100))
    train, held = split_eval(items, 0.1, seed=7)
    assert len(held) == 10 and sorted(train + held) == items
    assert split_eval(items, 0.1, seed=7) == (train, held)
    assert split_eval(items, 0.1, seed=8)[1] != held


def test_nan_guard_stops_training():
    guard, control = StopOnNonFiniteLoss(), type("C", (), {"should_training_stop": False})()
    state = type("S", (), {"global_step": 7})()
    guard.on_log(None, state, control, logs={"loss": 1.5})
    assert not control.should_training_stop
    guard.on_log(None, state, control, logs={"loss": float("nan")})
    assert control.should_training_stop and guard.bad_step == 7


def test_checkpoint_plan_checkpoints_the_fewest_layers_that_fit():
    plan = CheckpointPlan(layers=28, budget_bytes=100, per_token_full=1.0, per_token_none=8.0)
    assert plan.layers_for(12) == 0  # 96 bytes fit without checkpointing
    # 20 tokens need 160 bytes: 60 too many; each checkpointed layer saves 20 * 7 / 28 = 5 bytes
    assert plan.layers_for(20) == 12
    assert plan.layers_for(100) == 28 and plan.layers_for(1000) == 28  # never more than all layers
    nothing_fits = CheckpointPlan(layers=28, budget_bytes=0.0, per_token_full=float("inf"),
                                  per_token_none=float("inf"))
    assert nothing_fits.layers_for(1) == 28
    unmeasured = CheckpointPlan(layers=28, budget_bytes=100, per_token_full=1.0, per_token_none=float("inf"))
    assert unmeasured.layers_for(10) == 28  # no probe without checkpointing fitted: checkpoint all


class CyclingPlan(CheckpointPlan):
    """Checkpoints 0, 1, 2, 0, ... layers on successive micro-batches, whatever their size."""

    def layers_for(self, tokens):
        return sum(self.used.values()) % (self.layers + 1)


def test_checkpointing_changes_memory_not_numbers(data_file, tmp_path, monkeypatch):
    flags = ("--max-steps", "4", "--learning-rate", "5e-3")
    every = train(tiny_config(data_file, tmp_path / "on", *flags, "--gradient-checkpointing", "on")).model
    none = train(tiny_config(data_file, tmp_path / "off", *flags, "--gradient-checkpointing", "off")).model
    plan = CyclingPlan(layers=2, budget_bytes=0.0, per_token_full=1.0, per_token_none=1.0)
    monkeypatch.setattr(glmtune.training.job, "uses_checkpointing", lambda setting: True)  # auto is off without a GPU
    monkeypatch.setattr(glmtune.training.memory, "plan_checkpointing", lambda *args: plan)
    planned = train(tiny_config(data_file, tmp_path / "auto", *flags, "--gradient-checkpointing", "auto")).model
    assert plan.used == {0: 3, 1: 3, 2: 2}  # 4 steps x 2 micro-batches, in the order the plan gave
    weights = [{n: p for n, p in m.named_parameters() if "lora_" in n} for m in (every, none, planned)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, msg=name)
        torch.testing.assert_close(weights[2][name], value, msg=name)
    run = json.loads((tmp_path / "auto" / "train_metrics.json").read_text())
    assert run["checkpoint_plan"]["checkpointed_layers_per_micro_batch"] == {"0": 3, "1": 3, "2": 2}


# ---------- a real tiny run ----------

def test_run_leaves_every_output(trained):
    out, _ = trained
    for name in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "run_config.json",
                 "eval.jsonl", "train_metrics.json", "loss.png", "data_report.txt"]:
        assert (out / name).is_file(), name
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
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
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
