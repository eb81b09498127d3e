import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import glmtune
from glmtune.core.errors import DataError, RunDirError
from glmtune.data.reading import (
    Example,
    clean_text,
    format_qa_line,
    join_question,
    parse_line,
    parse_record,
    prompt_digest,
    read_dataset,
    read_prompt_digests,
    split_eval,
    write_examples,
    write_qa_lines,
)

from conftest import REALDATA


# Measured with `python bench/split_accuracy.py`: 313/321 rows exact (question and answer).
EDGE_CASE_ACCURACY = 313 / 321
MARGIN = 0.015


def realdata(name: str) -> Path:
    path = REALDATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


# --- parse_line ---------------------------------------------------------------------

GOLDEN = [
    ("头痛怎么办？ 我头痛三天了，怎么办？,你好，建议休息。", "头痛怎么办？我头痛三天了，怎么办？", "你好，建议休息。"),
    # ASCII ? in title, ASCII commas in ask and answer: the comma after the ask's last ? wins.
    (
        "乙肝会传染吗? 我是携带者,会传给家人吗?,一般不会,注意隔离。",
        "乙肝会传染吗?我是携带者,会传给家人吗?",
        "一般不会,注意隔离。",
    ),
    # No question mark in the title; placeholder ask dropped.
    ("肾肿瘤 无,手术切除为主,放疗效果不理想。", "肾肿瘤", "手术切除为主,放疗效果不理想。"),
    # ASCII-punctuated ask, full-width answer: 吗 closes the ask, the answer addresses the asker.
    (
        "乙肝严重吗 我是携带者,肝功能正常,需要治疗吗,你好，一般不需要。",
        "乙肝严重吗我是携带者,肝功能正常,需要治疗吗",
        "你好，一般不需要。",
    ),
    # Nothing closes the ask; the comma before full-width-punctuated text wins.
    (
        "大三阳怎么办 我怀孕八个月,都快生了,发现有大三阳,做好母婴阻断，出生后打疫苗。",
        "大三阳怎么办我怀孕八个月,都快生了,发现有大三阳",
        "做好母婴阻断，出生后打疫苗。",
    ),
    # Title with a space still ends at its question mark.
    (
        "HBV DNA高怎么办？ 查了两次都高,根据描述，建议抗病毒。",
        "HBV DNA高怎么办？查了两次都高",
        "根据描述，建议抗病毒。",
    ),
    # Outer whitespace, HTML entities, ideographic spaces and literal \n are repaired.
    ("  胃痛？ 饭后痛&nbsp;三天\\n很难受, 你好&amp;再见\u3000 ", "胃痛？饭后痛 三天\n很难受", "你好&再见"),
]


@pytest.mark.parametrize(("line", "question", "answer"), GOLDEN)
def test_golden_lines(line, question, answer):
    assert parse_line(line) == (question, answer)


def test_parse_record_fields_and_repairs():
    rec = parse_record("  胃痛？ 饭后痛&nbsp;三天\\n很难受, 你好&amp;再见\u3000 ")
    assert (rec.title, rec.ask) == ("胃痛？", "饭后痛 三天\n很难受")
    assert rec.question == rec.title + rec.ask
    assert set(rec.repairs) == {"html_entities", "ideographic_space", "literal_newline", "whitespace"}
    clean = parse_record("头痛怎么办？ 我头痛三天了，怎么办？,你好，建议休息。")
    assert clean.repairs == ()
    placeholder = parse_record("肾肿瘤 无,手术切除。")
    assert placeholder.ask == "" and "placeholder_ask" in placeholder.repairs


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("头痛怎么办？ 我头痛三天了，你好，建议休息。", "no ASCII comma"),
        ("头痛怎么办？ 我头痛三天了,", "empty answer"),
        ("头痛怎么办？ 我头痛三天了,&nbsp;\\n", "empty answer"),
        (",你好，建议休息。", "empty question"),
        ("   \u3000 ", "empty line"),
    ],
)
def test_unusable_lines_give_reasons(line, reason):
    with pytest.raises(ValueError, match=reason):
        parse_line(line)


CHINESE_LINE = st.text(alphabet="头痛发烧乙肝吗呢我你您根据无？?，,。. 　\n\\n&amp;;", max_size=60)


@settings(max_examples=300)
@given(st.one_of(st.text(), CHINESE_LINE))
def test_parse_line_only_raises_value_error(line):
    try:
        question, answer = parse_line(line)
    except ValueError as err:
        assert str(err)
    else:
        assert question and answer
        assert question == question.strip() and answer == answer.strip()


def test_edge_cases_parse_and_accuracy():
    rows = [json.loads(line) for line in realdata("edge_cases.jsonl").read_text(encoding="utf-8").splitlines()]
    questions = answers = 0
    for row in rows:
        try:
            question, answer = parse_line(row["line"])
        except ValueError:
            continue
        questions += question == join_question(row["title"], row["ask"])
        answers += answer == clean_text(row["answer"])
    assert len(rows) == 321
    assert answers / len(rows) >= EDGE_CASE_ACCURACY - MARGIN
    assert questions / len(rows) >= EDGE_CASE_ACCURACY - MARGIN


def test_toyhom_200_lines_all_parse():
    lines = realdata("toyhom_internal_medicine_200.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    for line in lines:
        assert line.count(",") == 1
        before, after = line.split(",")
        assert parse_line(line) == (before.replace(" ", "", 1), after)
    data = read_dataset(realdata("toyhom_internal_medicine_200.txt"))
    assert (data.lines_read, data.skipped, data.repaired) == (200, [], 0)
    assert len(data.examples) + data.duplicates_removed == 200


def test_gb18030_csv_reads_like_the_csv_module(tmp_path):
    path = realdata("toyhom_internal_medicine_excerpt.gb18030.csv")
    raw = path.read_bytes()
    text = raw.decode("gb18030")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    data = read_dataset(path)
    assert data.format == "csv"
    assert len(data.examples) + len(data.skipped) + data.duplicates_removed == len(rows) == 255

    expected, seen = [], set()
    for row in rows:
        pair = (join_question(row["title"], row["ask"]), clean_text(row["answer"]))
        if pair not in seen:
            seen.add(pair)
            expected.append((pair, row))
    assert [(e.question, e.answer) for e in data.examples] == [pair for pair, _ in expected]

    physical = text.split("\n")
    multiline = 0
    for example, (_, row) in zip(data.examples, expected, strict=True):
        assert physical[example.line_no - 1].startswith(row["department"] + ",")
        assert example.department == row["department"]
        if "\n" in row["answer"].strip():
            multiline += 1
            assert "\n" in example.answer
    assert multiline > 0

    for encoding in ("utf-8", "utf-8-sig"):
        copy = tmp_path / f"{encoding}.csv"
        copy.write_bytes(text.encode(encoding))
        assert read_dataset(copy).examples == data.examples


def test_csv_matches_columns_by_name_and_skips_short_rows(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('answer,title,ask\n"你好，多休息,多喝水",发烧怎么办？,"烧了\n两天"\n只有答案\n', encoding="utf-8")
    data = read_dataset(path)
    assert [(e.question, e.answer, e.line_no, e.department) for e in data.examples] == [
        ("发烧怎么办？烧了\n两天", "你好，多休息,多喝水", 2, None)
    ]
    assert [(s.line_no, s.reason) for s in data.skipped] == [(4, "row has fewer fields than the header")]


def test_csv_keeps_the_department_column_wherever_it_stands(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("title,Department ,ask,answer\n发烧？,内科,烧了两天,多休息\n头痛？, ,三天了,多睡觉\n",
                    encoding="utf-8")
    examples = read_dataset(path).examples
    assert [(e.question, e.department) for e in examples] == [("发烧？烧了两天", "内科"), ("头痛？三天了", None)]
    assert [e.department for e in read_dataset(write_examples(examples, tmp_path)).examples] == ["内科", None]


def test_csv_without_required_columns_is_an_error(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("department,question,answer\n内科,发烧？,休息\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.csv:1: .*title, ask"):
        read_dataset(path)


def test_jsonl_both_styles(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [
        {"question": "发烧怎么办？", "answer": "多休息。"},
        {"instruction": "头痛怎么办？", "input": "痛了三天", "output": "你好，建议检查。"},
        {"instruction": "咳嗽吃什么药？", "input": "", "output": "止咳糖浆。"},
        {"prompt": "wrong keys"},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    data = read_dataset(path)
    assert [(e.question, e.answer, e.line_no) for e in data.examples] == [
        ("发烧怎么办？", "多休息。", 1),
        ("头痛怎么办？\n痛了三天", "你好，建议检查。", 2),
        ("咳嗽吃什么药？", "止咳糖浆。", 3),
    ]
    assert [s.line_no for s in data.skipped] == [4]
    assert data.lines_read == 5


def test_json_array_with_line_numbers(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        '[\n  {"question": "发烧怎么办？",\n   "answer": "多休息。"},\n'
        '  {"instruction": "头痛？", "input": "三天", "output": "检查。"},\n  "not an object"\n]\n',
        encoding="utf-8",
    )
    data = read_dataset(path)
    assert [(e.question, e.line_no) for e in data.examples] == [("发烧怎么办？", 2), ("头痛？\n三天", 4)]
    assert [(s.line_no, s.reason) for s in data.skipped] == [(5, "not a JSON object")]


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("bad.jsonl", '{"question": "a", "answer": "b"}\n\n{"question": "c", "answer": \n', 3),
        ("bad.json", '[\n{"question": "a", "answer": "b"},\n{"question": }\n]', 3),
    ],
)
def test_malformed_json_names_file_and_line(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=rf"{name}:{line}: invalid JSON"):
        read_dataset(path)


def test_seed_file_skips_counts_and_reports(tmp_path):
    path = tmp_path / "train.txt"
    lines = [
        "发烧怎么办？ 烧了两天,多休息。",
        "",
        "没有逗号的行？ 描述，回答",
        "发烧怎么办？ 烧了两天,多休息。",
        " 发烧怎么办？  烧了两天,多休息。 ",
        "头痛？ 痛&amp;晕,检查。",
    ]
    path.write_text("\r\n".join(lines), encoding="gb18030")
    data = read_dataset(path)
    assert data.format == "qa-lines"
    assert [(e.question, e.line_no) for e in data.examples] == [("发烧怎么办？烧了两天", 1), ("头痛？痛&晕", 6)]
    assert [(s.line_no, s.reason, s.raw) for s in data.skipped] == [
        (3, "no ASCII comma separating question and answer", "没有逗号的行？ 描述，回答")
    ]
    assert (data.lines_read, data.duplicates_removed, data.repaired) == (6, 2, 1)
    report = "\n".join(data.report_lines())
    for fragment in (
        "lines read:         6",
        "examples used:      2 (1 repaired)",
        "skipped:            1",
        "duplicates removed: 2",
    ):
        assert fragment in report
    assert "line 3: no ASCII comma separating question and answer" in data.skipped_report()


def test_skipped_raw_text_is_clipped(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("好？ 描述,回答\n" + "长" * 500 + "\n", encoding="utf-8")
    (skipped,) = read_dataset(path).skipped
    assert skipped.raw == "长" * 200


def test_empty_and_all_bad_files_are_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt: no usable examples in 2 lines"):
        read_dataset(empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("没有逗号\n也没有逗号\n问题？ 描述,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt: .*3 lines.*no ASCII comma separating question and answer: 2"):
        read_dataset(bad)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=r"missing\.txt: file not found"):
        read_dataset(tmp_path / "missing.txt")
    damaged = tmp_path / "damaged.txt"
    damaged.write_bytes("发烧？ 两天,休息。\n头痛？ 三天,".encode() + b"\xff\n")
    with pytest.raises(DataError, match=r"damaged\.txt:2: invalid UTF-8"):
        read_dataset(damaged)


# --- writing ----------------------------------------------------------------------------

CLEAN = st.text().map(clean_text).filter(bool)
# Our own data: title？ + ask, no ASCII commas, spaces or characters that need escaping.
TITLE = st.text(alphabet="头痛发烧乙肝怎么办吗", min_size=1, max_size=10).map(lambda s: s + "？")
ASK = st.text(alphabet="我头痛三天了，还发烧。吗？", min_size=2, max_size=30)
ANSWER = st.text(alphabet="你好建议休息多喝水，。！？\n ", min_size=1, max_size=40).map(clean_text).filter(bool)


def roundtrip(tmp_path, pairs):
    examples = [Example(q, a, 0) for q, a in dict.fromkeys(pairs)]
    path = tmp_path / "eval.txt"
    write_qa_lines(examples, path)
    data = read_dataset(path)
    assert [(e.question, e.answer) for e in data.examples] == [(e.question, e.answer) for e in examples]
    assert data.skipped == [] and data.duplicates_removed == 0
    return path


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(CLEAN, CLEAN), min_size=1, max_size=5))
def test_write_qa_lines_roundtrips_any_normalised_text(tmp_path_factory, pairs):
    roundtrip(tmp_path_factory.mktemp("rt"), pairs)


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(TITLE, ASK, ANSWER), min_size=1, max_size=5))
def test_write_qa_lines_keeps_our_data_readable(tmp_path_factory, pairs):
    path = roundtrip(tmp_path_factory.mktemp("rt"), [(t + a, ans) for t, a, ans in pairs])
    for line, (title, ask, _) in zip(path.read_text(encoding="utf-8").splitlines(), dict.fromkeys(pairs), strict=True):
        assert line.startswith(f"{title} {ask},")


def test_format_qa_line_rejects_unnormalised_text():
    with pytest.raises(ValueError, match="clean_text"):
        format_qa_line(" 发烧？", "休息")
    with pytest.raises(ValueError, match="clean_text"):
        format_qa_line("发烧？", "休\t息")
    assert parse_line(format_qa_line("发烧 怎么办", "a, b & c\\n")) == ("发烧 怎么办", "a, b & c\\n")


def test_repairs_are_counted_per_example(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("发烧？ 两天,休息&amp;喝水。\n头痛？ 三天,检查。\n咳嗽？  一周,多喝水。\n", encoding="utf-8")
    data = read_dataset(path)
    assert data.repaired == 2
    assert Counter(r for line in path.read_text(encoding="utf-8").splitlines() for r in parse_record(line).repairs) == {
        "html_entities": 1,
        "whitespace": 1,
    }


def test_eval_split_is_deterministic_and_disjoint():
    items = list(range(100))
    train, held = split_eval(items, 0.1, seed=7)
    assert len(held) == 10 and sorted(train + held) == items
    assert split_eval(items, 0.1, seed=7) == (train, held)
    assert split_eval(items, 0.1, seed=8)[1] != held


def test_a_lone_surrogate_skips_its_record_with_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "头痛？", "answer": "休息。"}\n'
                    '{"question": "发烧 \\ud83d 怎么办？", "answer": "多喝水。"}\n'
                    '{"question": "咳嗽？", "answer": "止咳 \\udc00。"}\n'
                    '{"question": "失眠？", "answer": "规律作息 \\ud83d\\ude00。"}\n', encoding="utf-8")
    data = read_dataset(path)
    assert [ex.line_no for ex in data.examples] == [1, 4] and data.examples[1].answer == "规律作息 😀。"
    assert [(s.line_no, s.reason.split(" at ")[0]) for s in data.skipped] == [
        (2, "lone surrogate '\\ud83d'"), (3, "lone surrogate '\\udc00'")]
    tok = glmtune.load_tokenizer("tiny")
    assert all(tok(ex.question + ex.answer).input_ids for ex in data.examples)


def test_duplicates_are_reported_by_line(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("头痛？ 两天,休息。\n发烧？ 一天,喝水。\n头痛？ 两天,休息。\n咳嗽？ 一周,就医。\n头痛？ 两天,休息。\n",
                    encoding="utf-8")
    data = read_dataset(path)
    assert data.duplicates == [(3, 1), (5, 1)] and data.duplicates_removed == 2
    assert "duplicates removed: 2 (lines 3, 5)" in "\n".join(data.report_lines())
    assert "line 5: duplicate of line 1" in data.skipped_report()
    assert glmtune.parse_line("头痛？ 两天,休息。") == ("头痛？两天", "休息。")


def test_bare_cr_line_endings_are_lines_and_a_stray_cr_is_not(tmp_path):
    path = tmp_path / "mac.txt"
    path.write_bytes("头痛？ 两天,休息。\r发烧？ 一天,喝水。\r咳嗽？ 一周,就医。\r".encode())
    data = read_dataset(path)
    assert data.lines_read == 3 and [ex.answer for ex in data.examples] == ["休息。", "喝水。", "就医。"]
    path.write_bytes("高血压能喝咖啡吗？ 男，50岁,少量饮用\r一般可以。\r\n失眠？ 两个月,规律作息。\n".encode())
    data = read_dataset(path)  # a CR inside a line of an LF file belongs to its record
    assert data.lines_read == 2 and [ex.answer for ex in data.examples] == ["少量饮用\n一般可以。", "规律作息。"]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"question": ' + "9" * 5000 + ', "answer": "x"}'])
def test_unreadable_json_names_the_line(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "头痛？", "answer": "休息。"}\n' + text + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl:2: JSON that cannot be read"):
        read_dataset(path)


def test_a_prompt_is_known_by_its_words_and_everything_before_its_question():
    turn = Example("没有。", "休息。", 1, (("第1天头痛。", "有发热吗？"),), "你是医生。")
    assert prompt_digest(turn) == prompt_digest(Example(" 没有。\n", "", 0, (("第1天头痛。 ", "有发热吗？"),), "你是医生。"))
    assert prompt_digest(turn) != prompt_digest(Example("没有。", "休息。", 2, (("第2天头痛。", "有发热吗？"),), "你是医生。"))
    assert prompt_digest(turn) != prompt_digest(Example("没有。", "休息。", 3, turn.history))  # no system prompt
    assert prompt_digest(Example("头 痛", "", 0)) != prompt_digest(Example("头痛", "", 0))  # words, not characters


def test_a_damaged_prompt_hash_file_is_named(tmp_path):
    (tmp_path / "train_prompts.sha256").write_text("0123abc\n", encoding="utf-8")
    with pytest.raises(RunDirError, match=r"train_prompts.sha256 is damaged; delete it"):
        read_prompt_digests(tmp_path)
