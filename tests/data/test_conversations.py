"""Conversation data: ChatGLM3 finetune_demo, ShareGPT and `messages` JSONL, trained in the native
chat layout with every reply learned; and models found in the ModelScope cache."""

import json
import shutil

import pytest
import sentencepiece as spm

import glmtune
from glmtune.comparison.job import compare
from glmtune.core.config import CompareConfig
from glmtune.data.reading import Example, read_dataset
from glmtune.core.errors import ConfigError
from glmtune.training.job import train
from glmtune.model.sources import resolve_model_dir
from glmtune.model.prompts import IGNORE_INDEX, encode, encode_example

from conftest import tiny_config

GMASK, SOP, SYSTEM, USER, ASSISTANT, EOS = 64790, 64792, 64794, 64795, 64796, 2

CHATGLM3 = {"conversations": [{"role": "system", "content": "你是一名全科医生。"},
                              {"role": "user", "content": "头痛三天了。"}, {"role": "assistant", "content": "有发热吗？"},
                              {"role": "user", "content": "没有发热。"}, {"role": "assistant", "content": "先休息观察。"}]}
SHAREGPT = {"system": "你是一名全科医生。", "conversations": [
    {"from": "human", "value": "头痛三天了。"}, {"from": "gpt", "value": "有发热吗？"},
    {"from": "human", "value": "没有发热。"}, {"from": "gpt", "value": "先休息观察。"}]}
MESSAGES = {"messages": CHATGLM3["conversations"]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_three_conversation_formats_read_alike(tmp_path):
    expected = Example("没有发热。", "先休息观察。", 1, (("头痛三天了。", "有发热吗？"),), "你是一名全科医生。")
    for name, record in (("chatglm3", CHATGLM3), ("sharegpt", SHAREGPT), ("messages", MESSAGES)):
        (example,) = read_dataset(write_jsonl(tmp_path / f"{name}.jsonl", [record])).examples
        assert example == expected, name
        assert example.messages() == CHATGLM3["conversations"]


@pytest.mark.parametrize("record, reason", [
    ({"messages": [{"role": "user", "content": "头痛"}]}, "the last turn is a user turn with no reply"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "expected a assistant"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role 'tool' is not system, user or assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}, "empty assistant turn"),
    ({"messages": "hello"}, "not a non-empty list"),
    ({"messages": [{"role": "user", "content": 3}]}, "content is not a string"),
])
def test_broken_conversations_are_skipped_with_a_reason(tmp_path, record, reason):
    data = read_dataset(write_jsonl(tmp_path / "c.jsonl", [MESSAGES, record]))
    assert len(data.examples) == 1 and reason in data.skipped[0].reason


def test_every_reply_is_learned_as_chatglm3_finetune_demo_does(real_tokenizer_dir):
    tok = glmtune.load_tokenizer(real_tokenizer_dir)
    sp = spm.SentencePieceProcessor(model_file=str(real_tokenizer_dir / "tokenizer.model"))
    example = read_dataset_example(CHATGLM3)
    enc = encode(tok, example, "chat", 1024)
    nl = sp.encode("\n")
    system = [SYSTEM, *nl, *sp.encode("你是一名全科医生。")]
    user1, reply1 = [USER, *nl, *sp.encode("头痛三天了。"), ASSISTANT], [*nl, *sp.encode("有发热吗？")]
    user2, reply2 = [USER, *nl, *sp.encode("没有发热。"), ASSISTANT], [*nl, *sp.encode("先休息观察。")]
    assert enc.input_ids == [GMASK, SOP, *system, *user1, *reply1, *user2, *reply2, EOS]
    ignored = [IGNORE_INDEX]
    # Learned: each reply, and what ends it (the next <|user|>, or eos); not roles, system or user text.
    assert enc.labels == (ignored * (2 + len(system) + len(user1)) + reply1 + [USER]
                          + ignored * (len(user2) - 1) + reply2 + [EOS])
    assert enc.prompt_len == len(enc.input_ids) - len(reply2) - 1


def read_dataset_example(record):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return read_dataset(write_jsonl(Path(folder) / "c.jsonl", [record])).examples[0]


def test_single_turn_conversation_equals_the_chat_layout(tiny_dir):
    tok = glmtune.load_tokenizer(tiny_dir)
    plain = encode(tok, Example("头痛怎么办？", "多休息。", 1), "chat", 256)
    assert plain == encode_example(tok, "头痛怎么办？", "多休息。", "chat", 256)


def test_long_conversations_drop_their_oldest_turns(tiny_dir):
    tok = glmtune.load_tokenizer(tiny_dir)
    history = tuple((f"第{i}次问：头痛" * 10, "建议休息" * 10) for i in range(8))
    example = Example("现在呢？", "请就医。", 1, history, "你是医生。")
    enc = encode(tok, example, "chat", 256)
    assert len(enc.input_ids) <= 256 and enc.input_ids[-1] == tok.eos_token_id
    text = tok.decode(enc.input_ids)
    assert "第0次" not in text and "第7次" in text and "你是医生" in text and enc.truncated


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
    assert compare(config).prompt_format == "chat"
    with pytest.raises(ConfigError, match="use chat"):
        train(tiny_config(data, tmp_path / "glm3", "--max-steps", "1", "--prompt-format", "glm3"))


def test_model_ids_resolve_to_the_modelscope_cache(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "models" / "ZhipuAI" / "chatglm3-6b"
    shutil.copytree(tiny_dir, cached)
    assert resolve_model_dir("ZhipuAI/chatglm3-6b") == cached
    legacy = tmp_path / "hub" / "ZhipuAI" / "chatglm3-6b-32k"  # older ModelScope versions, no models/ level
    shutil.copytree(tiny_dir, legacy)
    assert resolve_model_dir("ZhipuAI/chatglm3-6b-32k") == legacy
    model = glmtune.load_model("ZhipuAI/chatglm3-6b", quantization=None)
    assert model.config.num_hidden_layers == 2
