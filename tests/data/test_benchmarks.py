"""Exam questions for the knowledge check: every format read into the same questions, groups from the
built-in map or the data, worked examples from the dev split, a bad file named with its line, and the
known suites fetched once into the cache."""

import json
import zipfile

import pytest

from conftest import SHARED, write_jsonl
from glmtune.core.errors import DataError
from glmtune.data.benchmarks import prompt_text, read_benchmark, select, shots_for
from glmtune.data.suites import suite_path

CMMLU = SHARED / "benchmarks" / "cmmlu"


@pytest.fixture(scope="module")
def cmmlu():
    if not CMMLU.is_dir():
        pytest.skip("../shared/benchmarks/cmmlu is absent")
    return read_benchmark(CMMLU)


def test_cmmlu_folder_splits_medical_from_general_as_its_readme_counts(cmmlu):
    groups = {g: sum(q.group == g for q in cmmlu.questions) for g in ("medical", "general")}
    assert groups == {"medical": 1501, "general": 781}  # ../shared/benchmarks/README.md's table
    first = cmmlu.questions[0]
    assert (first.id, first.question, first.answer) == ("cmmlu/anatomy/0", "女性生殖腺是", "A")
    assert first.options == {"A": "卵巢", "B": "前庭大腺", "C": "前庭球", "D": "乳腺"}
    assert {len(v) for v in cmmlu.shots.values()} == {5} and len(cmmlu.shots) == 11
    assert len(select(cmmlu, 3)) == 33


def test_shots_come_from_the_subjects_dev_split_with_their_answers(cmmlu):
    question = cmmlu.questions[0]
    text = prompt_text(question, shots_for(cmmlu, question, 2))
    shots = cmmlu.shots["anatomy"][:2]
    assert text.startswith("以下是单项选择题")
    assert text.count("题目：") == 3 and text.count("答案：") == 2  # the asked question has no answer line
    assert f"题目：{shots[0].question}" in text and f"答案：{shots[1].answer}" in text
    assert text.endswith("D. 乳腺")
    with pytest.raises(DataError, match="6-shot prompts need 6 solved questions of anatomy.*has 5"):
        shots_for(cmmlu, question, 6)


def test_ceval_layout_scores_val_where_test_has_no_answers(tmp_path):
    for split, answer in (("dev", "B"), ("val", "C"), ("test", "")):
        (tmp_path / split).mkdir()
        for subject in ("clinical_medicine", "law"):
            rows = ["id,question,A,B,C,D,answer,explanation"] + [f"{i},{subject} 第{i}题,甲,乙,丙,丁,{answer},"
                                                                  for i in range(3)]
            (tmp_path / split / f"{subject}_{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    bench = read_benchmark(tmp_path, "ceval")
    assert [q.subject for q in bench.questions] == ["clinical_medicine"] * 3 + ["law"] * 3
    assert {q.answer for q in bench.questions} == {"C"} and {q.answer for q in bench.shots["law"]} == {"B"}
    assert [q.group for q in bench.questions] == ["medical"] * 3 + ["general"] * 3


def test_cmb_json_with_several_right_answers_and_padded_options(tmp_path):
    records = [{"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科", "question_type": "多项选择题",
                "question": "属于β受体阻滞剂的是", "option": {"A": "美托洛尔", "B": "硝苯地平", "C": "普萘洛尔", "D": "阿托品",
                                                   "E": ""}, "answer": "AC"},
               {"exam_subject": "内科", "question": "首选", "option": {"A": "甲", "B": "乙"}, "answer": "B"}]
    path = tmp_path / "CMB-val-merge.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    first, second = read_benchmark(path, "cmb").questions
    assert first.options == {"A": "美托洛尔", "B": "硝苯地平", "C": "普萘洛尔", "D": "阿托品"}  # the empty E is no option
    assert (first.answer, first.multiple, first.group, first.subject) == ("AC", True, "medical", "内科")
    assert first.chance == pytest.approx(1 / 6) and second.chance == 0.5
    assert prompt_text(first, []).startswith("以下是多项选择题")


def test_plain_jsonl_groups_from_the_field_the_map_or_the_medical_default(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": "q1", "options": ["a", "b", "c"], "answer": "c", "subject": "chinese_history"},
        {"question": "q2", "options": {"A": "a", "B": "b"}, "answer": ["B"], "subject": "心内科"},
        {"question": "q3", "options": ["a", "b"], "answer": "A", "subject": "心内科", "group": "General"},
    ])
    questions = read_benchmark(path).questions
    assert [(q.group, q.mapped) for q in questions] == [("general", True), ("medical", False), ("general", True)]
    assert [q.answer for q in questions] == ["C", "B", "A"]


@pytest.mark.parametrize("content, name, message", [
    ('{"question": "q", "options": ["only one"], "answer": "A"}\n', "a.jsonl", r"a.jsonl:1: missing options"),
    ('{"question": "q", "answer": "A"}\n', "b.jsonl", r"b.jsonl:1: missing options"),
    ('{"question": "q", "options": ["x", "y"], "answer": "A"}\n{"question": "q", "options": ["x", "y"], "answer": "C"}\n',
     "c.jsonl", r"c.jsonl:2: answer 'C' is not among the options \(A, B\)"),
    ('{"question": "", "options": ["x", "y"], "answer": "A"}\n', "d.jsonl", r"d.jsonl:1: empty question"),
    ("", "e.jsonl", r"e.jsonl: no questions"),
    (",Question,A,B,C,D,Answer\n0,q,a,b,c,d,E\n", "f.csv", r"f.csv:2: answer 'E' is not among the options"),
    (",Question,A,B,C,D\n0,q,a,b,c,d\n", "g.csv", r"g.csv:1: no Answer column"),
    (",Question,A,B,C,D,Answer\n", "h.csv", r"h.csv: no questions below the header"),
    ('{"question": "q", "options": ["x", "y"], "answer": "A", "group": "surgery"}\n', "i.jsonl",
     r"i.jsonl:1: group 'surgery' is not one of medical, general"),
    ('{"question": "q", "options": [\n', "j.jsonl", r"j.jsonl:1: invalid JSON"),
    ('{"question": "q", "options": {"AB": "x", "C": "y"}, "answer": "C"}\n', "k.jsonl", r"k.jsonl:1: missing options"),
    ('{"question": "q", "options": ["x", "y"], "answer": "A", "group": 3}\n', "l.jsonl", r"l.jsonl:1: group 3 is not"),
    (",Question,A,B,C,D,Answer\n0," + "长" * 200_000 + ",a,b,c,d,A\n", "m.csv", r"m.csv:\d+: not readable as CSV"),
    ('{"id": 7, "question": "q", "options": ["x", "y"], "answer": "A"}\n' * 2, "n.jsonl",
     r"n.jsonl:2: id 7 is given twice"),
])
def test_a_bad_file_is_named_with_its_line(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_benchmark(path)


def test_a_suite_is_fetched_once_into_the_cache_and_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "cmmlu_v1_0_1.zip"
    with zipfile.ZipFile(archive, "w") as z:  # one top folder, and the __MACOSX that macOS zips add beside it
        for split in ("dev", "test"):
            z.writestr(f"cmmlu/{split}/anatomy.csv", ",Question,A,B,C,D,Answer\n0,女性生殖腺是,卵巢,前庭大腺,前庭球,乳腺,A\n")
        z.writestr("__MACOSX/cmmlu/._dev", "")
    calls = []

    def download(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        return str(archive)

    folder = suite_path("cmmlu", download)
    assert calls == [("haonan-li/cmmlu", "cmmlu_v1_0_1.zip", "dataset")]
    assert read_benchmark(folder, "cmmlu").questions[0].answer == "A"
    assert suite_path("cmmlu", download) == folder and len(calls) == 1  # the cache's copy, not a second download
    assert [p.name for p in folder.parent.iterdir()] == ["cmmlu"]  # no scratch left beside it

    def offline(**_):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    with pytest.raises(DataError, match=r"^cannot download C-Eval \(ceval/ceval-exam: ceval-exam.zip\).*couldn't "
                                        r"connect.*HF_ENDPOINT=https://hf-mirror.com.*--benchmark FOLDER$"):
        suite_path("ceval", offline)
    assert not (tmp_path / "cache" / "benchmarks" / "ceval").exists()
