"""Prompts and labels in ChatGLM3's layouts (glm3 and chat): golden ids on the real vocabulary, every
reply of a conversation learned, truncation that keeps the template, rows with nothing to learn."""

import pytest
import sentencepiece as spm

import glmtune
from glmtune.data.reading import Example, read_dataset
from glmtune.model.prompts import IGNORE_INDEX, encode, encode_example, tokenize_examples
from glmtune.model.tokenizer import load_tokenizer

from conftest import LONG_SYSTEM, conversations


QUESTION, ANSWER = "头痛三天怎么办？ 女，30岁，太阳穴胀痛。", "多为紧张性头痛，注意休息；若剧烈头痛伴呕吐请立即就医。"


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


GMASK, SOP, SYSTEM, USER, ASSISTANT, EOS = 64790, 64792, 64794, 64795, 64796, 2


def test_every_reply_is_learned_as_chatglm3_finetune_demo_does(real_tokenizer_dir):
    tok = glmtune.load_tokenizer(real_tokenizer_dir)
    sp = spm.SentencePieceProcessor(model_file=str(real_tokenizer_dir / "tokenizer.model"))
    example = Example("没有发热。", "先休息观察。", 1, (("头痛三天了。", "有发热吗？"),), "你是一名全科医生。")
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


def test_rows_without_an_answer_token_are_left_out_and_reported(tmp_path):
    data = conversations(tmp_path / "mixed.jsonl", [None, LONG_SYSTEM, None, LONG_SYSTEM, "简短回答。"])
    tok = load_tokenizer("tiny")
    dataset, stats = tokenize_examples(read_dataset(data).examples, tok, "chat", 64)
    assert len(dataset) == 3 and stats.count == 3 and stats.unanswered == [2, 4]
    assert all(any(label != IGNORE_INDEX for label in labels) for labels in dataset["labels"])
    assert max(dataset["length"]) <= 64
    assert "left out, no answer token within --max-length: 2 rows (lines 2, 4:" in "\n".join(stats.lines())


def test_an_over_long_text_is_measured_without_transformers_warning(caplog, tiny_dir):
    import logging

    from glmtune.model.prompts import prompt_ids
    from glmtune.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to pytest's
    try:
        ids = prompt_ids(tokenizer, "头痛" * tokenizer.model_max_length, "glm3")
    finally:
        logger.removeHandler(caplog.handler)
    assert len(ids) > tokenizer.model_max_length  # what our own refusal measures
    assert not [r for r in caplog.records if "Token indices" in r.getMessage()]
