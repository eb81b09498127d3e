"""Tests for glmtune.comparison.metrics. Golden values are worked out by hand in comments."""

from __future__ import annotations

from pathlib import Path

import jieba
import pytest
from hypothesis import given, settings, strategies as st

from glmtune.comparison.metrics import (
    DEFAULT_LEXICON_PATH,
    Lexicon,
    Overlap,
    TermDensity,
    _words,
    change_rate,
    char_bleu4,
    char_len,
    distinct_n,
    lcs_length,
    prompt_overlap,
    rouge_zh,
    summarize,
)


SENTENCE = "高血压和糖尿病患者，头痛时不要停用二甲双胍，高血压要监测。"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lexicon(tmp_path_factory: pytest.TempPathFactory) -> Lexicon:
    path = tmp_path_factory.mktemp("lex") / "terms.txt"
    write(path, "# 疾病\n高血压\n糖尿病\n头痛\n# 药物\n二甲双胍\n# 检查\nCT\nHbA1c\n")
    return Lexicon.load(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("高血压", 3),
        ("  高血压\n\n", 3),  # surrounding whitespace stripped
        ("高 血压", 4),  # interior whitespace counted
        ("💊x", 2),  # code points, not bytes
        ("", 0),
        (" \n\t", 0),
    ],
)
def test_char_len(text: str, expected: int) -> None:
    assert char_len(text) == expected


@pytest.mark.parametrize(
    ("base", "tuned", "expected"),
    [
        (100, 150, 0.5),  # (150 - 100) / 100
        (200, 50, -0.75),  # (50 - 200) / 200
        (40, 40, 0.0),
        (0, 5, None),
        (0, 0, None),
    ],
)
def test_change_rate(base: float, tuned: float, expected: float | None) -> None:
    assert change_rate(base, tuned) == expected


def test_load_categories_and_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.txt",
        "发热\n"  # before any header: no category
        "# 疾病\n"
        "高血压\n"
        "#\n"  # empty comment keeps the current category
        "糖尿病\n"
        "# 药物\n"
        "二甲双胍\n",
    )
    lex = Lexicon.load(path)
    assert lex.terms == frozenset({"发热", "高血压", "糖尿病", "二甲双胍"})
    assert lex.category("发热") is None
    assert lex.category("高血压") == "疾病"
    assert lex.category("糖尿病") == "疾病"
    assert lex.category("二甲双胍") == "药物"
    with pytest.raises(KeyError):
        lex.category("疾病")  # a header is not a term


def test_load_accepts_str_path_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff高血压\n头痛\n".encode("utf-8"))
    assert Lexicon.load(str(path)).terms == frozenset({"高血压", "头痛"})


@pytest.mark.parametrize(
    ("content", "lineno", "reason"),
    [
        ("# 疾病\n高血压\n\n头痛\n", 3, "blank line"),
        ("高血压\n   \n", 2, "blank line"),
        ("高血压\n头痛\n\n", 3, "blank line"),  # trailing empty line
        ("高血压\n高 血压\n", 2, "whitespace"),
        ("头痛\t\n", 1, "whitespace"),
        ("头痛\n高血压 \n", 2, "whitespace"),
        ("# 疾病\n高血压\n# 症状\n高血压\n", 4, "duplicate"),
    ],
)
def test_load_errors_name_file_and_line(
    tmp_path: Path, content: str, lineno: int, reason: str
) -> None:
    path = write(tmp_path / "bad.txt", content)
    with pytest.raises(ValueError, match=reason) as info:
        Lexicon.load(path)
    assert f"{path}:{lineno}:" in str(info.value)


def test_load_rejects_file_without_terms(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.txt", "# 疾病\n# 药物\n")
    with pytest.raises(ValueError, match="no terms"):
        Lexicon.load(path)


def test_load_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # jieba's stderr handler is bound at import time, so watch its log records
    # (which propagate to caplog) rather than the stderr file descriptor.
    Lexicon.load(write(tmp_path / "t.txt", "头痛\n"))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("jieba")] == []


def test_lexicons_do_not_leak(tmp_path: Path) -> None:
    drugs = Lexicon.load(write(tmp_path / "a.txt", "二甲双胍\n"))
    symptoms = Lexicon.load(write(tmp_path / "b.txt", "头痛\n"))
    text = "头痛时不要停用二甲双胍"
    assert "二甲双胍" in drugs.segment(text)
    # jieba's own dictionary splits the drug name; neither the other lexicon
    # nor the global tokenizer may have learned it.
    assert "二甲双胍" not in symptoms.segment(text)
    assert "二甲双胍" not in jieba.lcut(text)


def test_segment_drops_whitespace(lexicon: Lexicon) -> None:
    words = lexicon.segment("高血压  患者\n复查 HbA1c")
    assert words == ("高血压", "患者", "复查", "HbA1c")


def test_term_density_hand_count(lexicon: Lexicon) -> None:
    # Terms as tokens: 高血压, 糖尿病, 头痛, 二甲双胍, 高血压 -> 5 hits, 4 distinct.
    # Characters: 高血压和糖尿病患者(9) ，(1) 头痛时不要停用二甲双胍(11) ，(1)
    # 高血压要监测(6) 。(1) = 29.
    density = lexicon.term_density(SENTENCE)
    assert density.hits == 5
    assert density.distinct == 4
    assert density.per_100_chars == pytest.approx(5 * 100 / 29)


def test_term_density_ascii_mix(lexicon: Lexicon) -> None:
    # 复查 HbA1c 和 CT ， CT 正常: 3 hits (HbA1c, CT, CT), 2 distinct;
    # 2 + 5 + 1 + 2 + 1 + 2 + 2 = 15 characters -> 3 * 100 / 15 = 20.
    assert lexicon.term_density("复查HbA1c和CT，CT正常") == TermDensity(3, 20.0, 2)


def test_term_density_counts_tokens_not_substrings(lexicon: Lexicon) -> None:
    # jieba keeps 偏头痛 as one word, so the term 头痛 inside it is no hit.
    assert lexicon.term_density("偏头痛很常见").hits == 0


@pytest.mark.parametrize("text", ["", "  \n"])
def test_term_density_empty(lexicon: Lexicon, text: str) -> None:
    assert lexicon.term_density(text) == TermDensity(0, 0.0, 0)


def test_prompt_overlap_identical(lexicon: Lexicon) -> None:
    assert prompt_overlap(SENTENCE, SENTENCE, lexicon.segment) == Overlap(1.0, 1.0)


def test_prompt_overlap_disjoint(lexicon: Lexicon) -> None:
    assert prompt_overlap("高血压怎么办？", "多喝热水。", lexicon.segment) == Overlap(0.0, 0.0)


def test_prompt_overlap_partial() -> None:
    # Answer words without punctuation: {高血压, 患者, 可以, 吃, 氨氯地平}; in the
    # prompt: 高血压, 吃 -> 2/5.
    # Answer chars 高血压患者可以吃氨氯地平 (12) give 11 distinct bigrams; the
    # prompt 高血压吃什么药 shares 高血, 血压 -> 2/11.
    overlap = prompt_overlap("高血压 吃 什么 药", "高血压 患者 可以 吃 氨氯地平 。", str.split)
    assert overlap.word == pytest.approx(2 / 5)
    assert overlap.bigram == pytest.approx(2 / 11)


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("高血压,头痛.", "高血压，头痛。"),  # ASCII vs full-width punctuation
        ("高血压怎么办？", "高血压……!!"),  # only punctuation is new
        ("头痛", "头痛~+"),  # ASCII marks that Unicode calls symbols
    ],
)
def test_prompt_overlap_ignores_punctuation(lexicon: Lexicon, prompt: str, answer: str) -> None:
    assert prompt_overlap(prompt, answer, lexicon.segment) == Overlap(1.0, 1.0)


@pytest.mark.parametrize("answer", ["", "  ", "。！"])
def test_prompt_overlap_empty_answer(lexicon: Lexicon, answer: str) -> None:
    assert prompt_overlap("高血压怎么办？", answer, lexicon.segment) == Overlap(0.0, 0.0)


def test_rouge_identical(lexicon: Lexicon) -> None:
    scores = rouge_zh(SENTENCE, SENTENCE, lexicon.segment)
    assert set(scores) == {"rouge-1", "rouge-2", "rouge-l"}
    # rouge_chinese adds 1e-8 to the F denominator, hence approx.
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in scores.values())


def test_rouge_disjoint(lexicon: Lexicon) -> None:
    scores = rouge_zh("高血压要监测", "多喝热水", lexicon.segment)
    assert scores == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_rouge_hand_computed() -> None:
    # hyp: 患者 应 低盐 饮食 (4 words); ref: 患者 需要 低盐 低脂 饮食 (5 words).
    # ROUGE-1: 3 shared words -> P = 3/4, R = 3/5, F = 2PR/(P+R) = 2/3.
    # ROUGE-2: hyp bigrams (患者 应)(应 低盐)(低盐 饮食) share none with ref -> 0.
    # ROUGE-L: LCS 患者 低盐 饮食 = 3 -> same P, R as ROUGE-1 -> 2/3.
    scores = rouge_zh("患者 应 低盐 饮食", "患者 需要 低盐 低脂 饮食", str.split)
    assert scores["rouge-1"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["rouge-2"] == pytest.approx(0.0, abs=1e-9)
    assert scores["rouge-l"] == pytest.approx(2 / 3, abs=1e-6)


def test_rouge_counts_ngram_sets() -> None:
    # rouge_chinese's default counts distinct n-grams: {a, b} vs {a, b} -> 1.0,
    # where clipped counts would give P = 2/3, R = 1, F = 0.8.
    assert rouge_zh("a a b", "a b", str.split)["rouge-1"] == pytest.approx(1.0, abs=1e-6)


def test_rouge_l_equals_rouge_chineses_on_real_answers(lexicon: Lexicon, realdata_dir: Path) -> None:
    from rouge_chinese import Rouge

    from glmtune.data.reading import read_dataset

    answers = [ex.answer for ex in read_dataset(realdata_dir / "toyhom_internal_medicine_200.txt").examples]
    pairs = [(answers[i], answers[(i * 7 + 3) % len(answers)]) for i in range(len(answers))]
    pairs += [(a + a[::-1], a) for a in answers[:20]]  # long, repetitive hypotheses
    for hyp, ref in pairs:
        hyp_words, ref_words = (" ".join(_words(text, lexicon.segment)) for text in (hyp, ref))
        expected = Rouge().get_scores(hyp_words, ref_words)[0]["rouge-l"]["f"]
        assert rouge_zh(hyp, ref, lexicon.segment)["rouge-l"] == pytest.approx(expected, abs=1e-12)


@given(st.lists(st.sampled_from("abcde"), max_size=30), st.lists(st.sampled_from("abcde"), max_size=30))
@settings(max_examples=200, deadline=None)
def test_lcs_length_equals_the_textbook_table(a: list[str], b: list[str]) -> None:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    assert lcs_length(a, b) == table[-1][-1]


@pytest.mark.parametrize(("hyp", "ref"), [("", "高血压"), ("高血压", ""), ("  ", "高血压"), ("", "")])
def test_rouge_empty(lexicon: Lexicon, hyp: str, ref: str) -> None:
    assert rouge_zh(hyp, ref, lexicon.segment) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_char_bleu4_identical() -> None:
    assert char_bleu4("高血压患者应低盐饮食", "高血压患者应低盐饮食") == pytest.approx(1.0)


def test_char_bleu4_ignores_whitespace() -> None:
    assert char_bleu4("高血压 患者\n应低盐饮食", "高血压患者应 低盐饮食") == pytest.approx(1.0)


def test_char_bleu4_hand_computed() -> None:
    # hyp 每天服一次药 vs ref 每天服药一次, both 6 chars -> brevity penalty 1.
    # p1 = 6/6 (all chars shared)
    # p2 = 3/5 (每天, 天服, 一次 of 每天 天服 服一 一次 次药)
    # p3 = 1/4 (每天服 of 每天服 天服一 服一次 一次药)
    # p4 = 0/3 -> method3 replaces the first zero with 1 / (2^1 * 3) = 1/6
    # BLEU = (1 * 3/5 * 1/4 * 1/6) ** (1/4) = 0.025 ** 0.25 = 0.3976353...
    assert char_bleu4("每天服一次药", "每天服药一次") == pytest.approx(0.3976353, abs=1e-7)


@pytest.mark.parametrize(("hyp", "ref"), [("", "高血压"), (" \n", "高血压"), ("高血压", "")])
def test_char_bleu4_empty(hyp: str, ref: str) -> None:
    assert char_bleu4(hyp, ref) == 0.0


def test_char_bleu4_disjoint() -> None:
    # No shared character: nltk returns 0 before any smoothing is applied.
    assert char_bleu4("多喝热水休息", "高血压要监测") == 0.0


@pytest.mark.parametrize(
    ("texts", "n", "expected"),
    [
        (["abab", "ab"], 1, 2 / 6),  # a b a b a b -> {a, b}
        (["abab", "ab"], 2, 2 / 4),  # ab ba ab | ab -> {ab, ba}
        (["ab", "ba"], 2, 1.0),  # n-grams do not span texts (no "bb")
        (["ab", "ab"], 3, 0.0),  # too short for any trigram
        ([], 1, 0.0),
        (["", "  "], 1, 0.0),
        # 头痛headache (whitespace removed) + 头痛:
        # unigrams 10 + 2 = 12, distinct {头 痛 h e a d c} = 7
        (["头痛 headache", "头痛"], 1, 7 / 12),
        # bigrams 头痛 痛h he ea ad da ac ch he + 头痛 = 10, distinct 8
        (["头痛 headache", "头痛"], 2, 8 / 10),
    ],
)
def test_distinct_n(texts: list[str], n: int, expected: float) -> None:
    assert distinct_n(texts, n) == pytest.approx(expected)


def test_distinct_n_rejects_bad_n() -> None:
    with pytest.raises(ValueError):
        distinct_n(["abc"], 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="ab头痛 ", max_size=8), max_size=4), st.integers(1, 3))
def test_distinct_n_halves_when_corpus_duplicated(texts: list[str], n: int) -> None:
    # Duplicating the corpus doubles the n-gram count but adds no new n-gram.
    assert distinct_n(texts + texts, n) == pytest.approx(distinct_n(texts, n) / 2)


def test_summarize_skips_none() -> None:
    # Kept: 1, 3, 8 -> mean 12/3 = 4, median 3.
    assert summarize([1.0, None, 3.0, None, 8.0]) == {"mean": 4.0, "median": 3.0, "n": 3}


def test_summarize_even_count() -> None:
    # Median of 1, 2, 3, 10 is (2 + 3) / 2; mean 16/4.
    assert summarize([10.0, 1.0, 3.0, 2.0]) == {"mean": 4.0, "median": 2.5, "n": 4}


@pytest.mark.parametrize("values", [[], [None, None]])
def test_summarize_nothing_left(values: list[float | None]) -> None:
    assert summarize(values) == {"mean": None, "median": None, "n": 0}


def test_lexicon_loads_clean_and_large():
    text = DEFAULT_LEXICON_PATH.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in text), "blank line in the lexicon"
    terms = [line for line in text if not line.startswith("#")]
    assert len(terms) == len(set(terms)) >= 2000
    lexicon = Lexicon.load()
    assert {lexicon.category(t) for t in lexicon.terms} == {"疾病", "症状", "药物", "检查", "解剖", "科室", "中医"}


def test_term_density_of_a_known_sentence():
    lexicon = Lexicon.load()
    sentence = "患者有高血压和糖尿病，服用二甲双胍后出现头痛，建议复查血常规。"
    # hand count: 高血压, 糖尿病, 二甲双胍, 头痛, 血常规 -> 5 hits, 5 distinct, over 31 characters
    density = lexicon.term_density(sentence)
    assert (density.hits, density.distinct) == (5, 5)
    assert density.per_100_chars == pytest.approx(5 * 100 / 31)
