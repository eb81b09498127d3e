"""The knowledge check's scoring: batched option likelihoods equal a direct computation, the answer
letters are chosen as stated, and accuracy differences carry a correct paired interval. (A whole
comparison's report of the check: tests/comparison/test_compare.py.)"""

import pytest
import torch

from glmtune.comparison.knowledge import Exam, SideExam, choose, encode_exam, letter_logprobs, summarize
from glmtune.data.benchmarks import Question, prompt_text
from glmtune.model.loading import load_model
from glmtune.model.prompts import answer_ids, prompt_ids
from glmtune.model.tokenizer import load_tokenizer


def question(i, answer="B", group="medical", options=4, subject=None):
    """A question whose text grows with `i`, so that a batch needs padding."""
    return Question(f"t/{subject or group}/{i}", subject or group, group, "以下哪项正确" + "，请判断" * i,
                    dict(zip("ABCDE", ["甲", "乙", "丙", "丁", "戊"][:options])), answer)


@pytest.mark.parametrize("layout", ["glm3", "chat"])
def test_batched_option_likelihoods_equal_one_question_at_a_time(tiny_dir, layout):
    tokenizer = load_tokenizer(tiny_dir)
    model = load_model(str(tiny_dir), dtype=torch.float32).eval()
    questions = [question(i, options=4 + i % 2) for i in (0, 7, 2, 11, 5)]
    exam = Exam(questions, [prompt_text(q, []) for q in questions], ["t"], 0)
    encoded = encode_exam(tokenizer, exam, layout)
    # a budget that forces several batches of rows padded to different widths
    batched = letter_logprobs(model, encoded, list(range(len(questions))), 3 * len(encoded.ids[3]), tokenizer)
    for q, text, got in zip(questions, exam.texts, batched):
        reply = answer_ids(tokenizer, "A", layout)  # the tiny vocabulary writes "A" as "▁" + "A"
        assert tokenizer.convert_ids_to_tokens(reply[-1:]) == ["A"]
        ids = prompt_ids(tokenizer, text, layout) + reply[:-1]
        with torch.no_grad():
            last = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        letters = tokenizer.convert_tokens_to_ids(list(q.options))
        assert got == pytest.approx(last[letters].tolist(), abs=1e-4)


def test_the_answer_is_the_likeliest_letter_or_as_many_as_are_right():
    assert choose(question(0, "C"), [-3.0, -2.0, -1.0, -4.0]) == "C"
    assert choose(question(0, "AD"), [-1.5, -2.0, -3.0, -1.0]) == "AD"  # the two likeliest, whatever their order


def test_accuracy_difference_and_interval_on_a_crafted_pair():
    # 100 questions: 30 right on both sides, 25 fixed, 5 broken, 40 wrong on both: +20 points exactly
    questions = [question(i, "A") for i in range(100)]
    base = ["A"] * 30 + ["B"] * 25 + ["A"] * 5 + ["C"] * 40
    tuned = ["A"] * 30 + ["A"] * 25 + ["B"] * 5 + ["D"] * 40
    exam = Exam(questions, [""] * 100, ["t"], 0)
    knowledge = summarize(exam, "glm3", SideExam(base, [], 1.0), SideExam(tuned, [], 1.0))
    medical = knowledge.group("medical")
    assert (medical.base, medical.tuned, medical.fixed, medical.broke) == (35.0, 55.0, 25, 5)
    d = medical.difference
    assert d.mean == pytest.approx(20.0) and d.reliable
    # the paired difference's standard error: sqrt((30 - 400/100) / 99 / 100) * 100 ≈ 5.1 points
    assert 8 < d.low < 12 and 28 < d.high < 32
    assert len(knowledge.changed) == 70 and knowledge.group("general") is None
    alike = summarize(exam, "glm3", SideExam(base, [], 1.0), SideExam(base, [], 1.0)).group("medical")
    assert alike.difference.mean == 0 and not alike.difference.reliable


def test_a_folder_named_like_a_suite_is_read_not_downloaded(tmp_path, monkeypatch):
    from glmtune.comparison.knowledge import read_exam

    (tmp_path / "cmmlu" / "test").mkdir(parents=True)
    (tmp_path / "cmmlu" / "test" / "anatomy.csv").write_text(",Question,A,B,C,D,Answer\n0,女性生殖腺是,卵巢,前庭大腺,前庭球,乳腺,A\n",
                                                             encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download would fail
    exam = read_exam(["cmmlu"], shots=0, per_subject=0)
    assert [q.id for q in exam.questions] == ["cmmlu/anatomy/0"]
