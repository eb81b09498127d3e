"""Conversation data: ChatGLM3 finetune_demo, ShareGPT and `messages` JSONL read alike, and broken
conversations skipped with a reason."""

import pytest

from glmtune.data.reading import Example, read_dataset, write_examples

from conftest import write_jsonl


CHATGLM3 = {"conversations": [{"role": "system", "content": "你是一名全科医生。"},
                              {"role": "user", "content": "头痛三天了。"}, {"role": "assistant", "content": "有发热吗？"},
                              {"role": "user", "content": "没有发热。"}, {"role": "assistant", "content": "先休息观察。"}]}
SHAREGPT = {"system": "你是一名全科医生。", "conversations": [
    {"from": "human", "value": "头痛三天了。"}, {"from": "gpt", "value": "有发热吗？"},
    {"from": "human", "value": "没有发热。"}, {"from": "gpt", "value": "先休息观察。"}]}
MESSAGES = {"messages": CHATGLM3["conversations"]}


def test_three_conversation_formats_read_alike(tmp_path):
    expected = Example("没有发热。", "先休息观察。", 1, (("头痛三天了。", "有发热吗？"),), "你是一名全科医生。",
                       from_conversation=True)
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


def test_an_eval_split_of_conversations_is_written_as_conversations_even_of_one_exchange(tmp_path):
    single = [{"messages": [{"role": "user", "content": f"头痛{i}天怎么办？"}, {"role": "assistant", "content": "多休息。"}],
               **({"department": "内科"} if i else {})} for i in range(2)]
    for name, records in (("single", single), ("mixed", [single[0], MESSAGES])):
        examples = read_dataset(write_jsonl(tmp_path / f"{name}.jsonl", records)).examples
        folder = tmp_path / name
        folder.mkdir()
        assert write_examples(examples, folder) == folder / "eval.jsonl"
        back = read_dataset(folder / "eval.jsonl")
        assert [ex.messages() for ex in back.examples] == [ex.messages() for ex in examples]
        assert [ex.department for ex in back.examples] == [ex.department for ex in examples]
        assert all(ex.from_conversation for ex in back.examples)
    # question/answer objects without a department stay in the seed format
    examples = read_dataset(write_jsonl(tmp_path / "qa.jsonl", [{"question": "头痛？", "answer": "休息。"}])).examples
    assert write_examples(examples, tmp_path) == tmp_path / "eval.txt"
