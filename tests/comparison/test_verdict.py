"""The comparison's judgement: degenerate answers are flagged and never win, intervals are right on
crafted data, the verdict says helped / hurt / no difference when it should, and the HTML report
holds every prompt."""

import json
import random
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glmtune.comparison.generation import Generated
from glmtune.comparison.knowledge import Exam, SideExam, summarize
from glmtune.data.benchmarks import Question
from glmtune.comparison.html_report import render
from glmtune.comparison.report import Both, Report, Settings, SideTiming, Timing
from glmtune.comparison.metrics import DEFAULT_LEXICON_PATH, Lexicon, answer_flags, char_bleu4, rouge_zh
from glmtune.comparison.scoring import Sample, department_table, metric_table, score, summary_lines
from glmtune.comparison.verdict import Interval, paired_interval, wins_ties_losses

REFERENCE = "建议低盐饮食，规律服用降压药，每天监测血压，头晕胸痛时及时就医。"
GOOD = "低盐饮食，规律服用降压药，监测血压，有胸痛及时就医。"
POOR = "多喝热水，注意休息。"
PUNCTUATION = "，。！？、；：“”（）《》…—,.!?;:()[]<>~+=*&^%$#@ \n"


@pytest.fixture(scope="module")
def lexicon():
    return Lexicon.load(DEFAULT_LEXICON_PATH)


@pytest.mark.parametrize("text, stopped, flags", [
    ("", True, ["empty"]),
    ("  \n ", False, ["empty", "truncated"]),
    ("，。，。" * 60, False, ["punctuation-only", "truncated"]),
    ("头痛" * 40, True, ["repetitive"]),
    ("建议休息。建议休息。建议休息。建议休息。建议休息。建议休息。", True, ["repetitive"]),
    (GOOD, True, []),
    (GOOD, False, ["truncated"]),
    ("头痛头痛", True, []),  # too short to call a loop
])
def test_degenerate_answers_are_flagged(text, stopped, flags):
    assert answer_flags(text, stopped) == flags


def test_real_answers_are_not_flagged(realdata_dir):
    from glmtune.data.reading import read_dataset

    answers = [ex.answer for ex in read_dataset(realdata_dir / "toyhom_internal_medicine_200.txt").examples]
    flagged = [a for a in answers if answer_flags(a, True)]
    assert len(answers) >= 190 and not flagged, flagged[:3]


@settings(max_examples=60, deadline=None)
@given(noise=st.text(alphabet=PUNCTUATION, min_size=1, max_size=40), reference=st.sampled_from([REFERENCE, GOOD, POOR]))
def test_punctuation_never_raises_rouge_or_bleu(lexicon, noise, reference):
    assert rouge_zh(noise, reference, lexicon.segment) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert char_bleu4(noise, reference) == 0.0
    # and punctuation added to a real answer changes nothing
    assert rouge_zh(POOR + noise, reference, lexicon.segment) == pytest.approx(rouge_zh(POOR, reference, lexicon.segment))


def test_bootstrap_interval_on_known_data():
    constant = paired_interval([0.1] * 30, [0.3] * 30)
    assert constant.mean == pytest.approx(0.2) and constant.low is constant.high is None and constant.reliable
    rng = np.random.default_rng(7)
    diffs = rng.normal(0.5, 1.0, size=400)
    interval = paired_interval([0.0] * 400, list(diffs))
    half_width = 1.96 * diffs.std(ddof=1) / np.sqrt(400)  # the normal-theory interval, which it must approach
    assert interval.mean == pytest.approx(diffs.mean())
    assert interval.low == pytest.approx(diffs.mean() - half_width, abs=0.015)
    assert interval.high == pytest.approx(diffs.mean() + half_width, abs=0.015)
    symmetric = paired_interval([0.0] * 40, [1.0, -1.0] * 20)
    assert symmetric.low < 0 < symmetric.high and not symmetric.reliable
    assert paired_interval([None, 1.0], [2.0, None]) is None
    assert wins_ties_losses([0.1, 0.2, 0.3, None], [0.2, 0.2, 0.1, 0.5]) == (1, 1, 1)


ZERO_WIDTH = re.compile(r"\[([^,\]]+), \1\]")  # "[x, x]"


def test_an_interval_is_never_printed_zero_wide():
    assert Interval(0.2, None, None, 30).text(0.1) == "+0.200 (the same on all 30 prompts)"
    assert paired_interval([0.1], [0.4]).text(0.1) == "+0.300 (one prompt)"
    assert Interval(-7.7, -7.701, -7.699, 27).text(7.7) == "-7.700 [-7.701, -7.699]"  # not [-7.70, -7.70]
    assert Interval(-7.7, -7.9, -7.5, 27).text(7.7) == "-7.70 [-7.90, -7.50]"
    assert Interval(-7.7, None, None, 27, batch=True).text(7.7) == "-7.70 (batch figure, no interval)"
    assert not Interval(-7.7, None, None, 27, batch=True).reliable


def timed(text: str, latency: float, ttft: float) -> Generated:
    return Generated(text, 40, latency, ttft, True)


@pytest.mark.parametrize("one_per_batch", [False, True])
def test_timing_is_a_batch_figure_unless_every_prompt_had_its_own_batch(lexicon, one_per_batch):
    # one batch per side: every answer ends at the batch's last step, so its clock readings are alike
    data = [Sample(f"问题{i}？", REFERENCE, {"base": timed(POOR, 9.0 + i % 3, 0.5 + i % 2),
                                            "tuned": timed(GOOD, 1.3 + i % 2, 0.2)}, department="儿科")
            for i in range(24)]
    _, aggregate = score(data, lexicon, one_per_batch=one_per_batch)
    timing = [aggregate.metrics[key].difference for key in ("latency_s", "ttft_s", "decode_tok_s")]
    assert all(d.batch is not one_per_batch for d in timing)
    table = metric_table(aggregate)
    latency = next(line for line in table if line.startswith("latency per answer"))
    assert ("(batch figure, no interval)" in latency) is not one_per_batch and ("[" in latency) is one_per_batch
    printed = [*table, *department_table(aggregate), *aggregate.verdict.sentences]
    assert not [line for line in printed if ZERO_WIDTH.search(line)]
    intervals = [m.difference for m in aggregate.metrics.values()] + [d.difference for d in aggregate.departments]
    assert all(d.low is None or d.low < d.high for d in intervals if d is not None)  # the JSON report too


def answered(text: str, stopped: bool = True) -> Generated:
    return Generated(text, max(1, len(text)), 1.0, 0.1, stopped)


def samples(pairs, reference=REFERENCE, departments=(None,)):
    return [Sample(f"问题{i}？", reference, {"base": answered(b), "tuned": answered(t)},
                   department=departments[i % len(departments)]) for i, (b, t) in enumerate(pairs)]


def test_verdict_clear_win(lexicon):
    _, aggregate = score(samples([(POOR, GOOD)] * 25 + [(GOOD, GOOD)] * 5), lexicon)
    verdict = aggregate.verdict
    assert verdict.headline.startswith("HELPED")
    assert verdict.sentences[0].startswith("fine-tuned is closer to the reference answers: ROUGE-L +")
    assert "wins 25 of 30" in verdict.sentences[0]


def test_verdict_clear_loss(lexicon):
    _, aggregate = score(samples([(GOOD, POOR)] * 30), lexicon)
    assert aggregate.verdict.headline.startswith("HURT")
    assert "loses 30 of 30" in aggregate.verdict.sentences[0]


def test_verdict_no_difference(lexicon):
    pairs = [(GOOD, POOR), (POOR, GOOD)] * 15
    random.Random(0).shuffle(pairs)
    _, aggregate = score(samples(pairs), lexicon)
    assert aggregate.verdict.headline.startswith("NO RELIABLE DIFFERENCE")
    assert aggregate.verdict.sentences[0].startswith("no reliable difference in closeness to the reference")
    assert "wins 15, ties 0, losses 15 of 30" in aggregate.verdict.sentences[0]


def exam(medical: tuple[int, int], general: tuple[int, int], n: int = 200):
    """The knowledge check's results where of `n` questions per group the base gets the first number
    right and the fine-tuned model the second (the right ones first on both sides)."""
    questions = [Question(f"t/{g}/{i}", g, g, "题", {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}, "A")
                 for g in ("medical", "general") for i in range(n)]
    base = [("A" if i < right else "B") for right, _ in (medical, general) for i in range(n)]
    tuned = [("A" if i < right else "C") for _, right in (medical, general) for i in range(n)]
    return summarize(Exam(questions, [""] * len(questions), ["t"], 0), "glm3", SideExam(base, [], 1.0),
                     SideExam(tuned, [], 1.0))


def test_a_fine_tune_that_forgets_is_never_plainly_helped(lexicon):
    forgot = exam(medical=(60, 62), general=(100, 80))  # -10 points of general knowledge
    _, closer = score(samples([(POOR, GOOD)] * 25 + [(GOOD, GOOD)] * 5), lexicon, knowledge=forgot)
    assert closer.verdict.headline.startswith("MIXED: answers closer to the references, but forgot general "
                                              "knowledge (-10.0 [")
    assert "forgot general knowledge: general exam accuracy 50.0% → 40.0%, -10.0 [" in "\n".join(closer.verdict.sentences)
    pairs = [(GOOD, POOR), (POOR, GOOD)] * 15
    _, alike = score(samples(pairs), lexicon, knowledge=forgot)
    assert alike.verdict.headline.startswith("HURT: forgot general knowledge")
    assert any(s.startswith("no reliable change in medical knowledge: medical exam accuracy 30.0% → 31.0%")
               for s in alike.verdict.sentences)


def test_medicine_learned_helps_where_the_answers_alone_cannot_tell(lexicon):
    learned = exam(medical=(50, 80), general=(100, 100))
    pairs = [(GOOD, POOR), (POOR, GOOD)] * 15
    _, aggregate = score(samples(pairs), lexicon, knowledge=learned)
    assert aggregate.verdict.headline.startswith("HELPED: knows more medicine (+15.0 [")
    assert "no reliable change in general knowledge" in "\n".join(aggregate.verdict.sentences)
    _, unchanged = score(samples(pairs), lexicon, knowledge=exam(medical=(50, 50), general=(100, 100)))
    assert unchanged.verdict.headline.startswith("NO RELIABLE DIFFERENCE")


def test_degenerate_side_never_reads_as_an_improvement(lexicon):
    # the tuned side prints punctuation, yet its (teacher-forced) perplexity fell: still not helped
    data = samples([(POOR, "，。" * 30)] * 27)
    for s in data:
        s.ppl = {"base": 12.0, "tuned": 8.0}
    _, aggregate = score(data, lexicon)
    verdict = aggregate.verdict
    assert verdict.headline.startswith("NOT HELPED")
    assert verdict.sentences[0].startswith("fine-tuned answers degenerate: 27 of 27 punctuation-only")
    ppl = next(s for s in verdict.sentences if "perplexity" in s)
    assert "more likely" in ppl and ppl.endswith("(not an improvement: the fine-tuned answers degenerate)")
    assert aggregate.flags.tuned["punctuation-only"] == 27 and aggregate.degenerate == Both(0, 27)


def test_table_states_directions_and_the_log_is_one_screen(lexicon):
    _, aggregate = score(samples([(POOR, GOOD)] * 25), lexicon)
    table = metric_table(aggregate)
    row = next(line for line in table if line.startswith("ROUGE-L F"))
    assert " higher " in row and "+0.800 (the same on all 25 prompts)" in row
    length = next(line for line in table if line.startswith("output length (chars)"))
    assert length.split()[3] == "-" and length.endswith("%")  # no better direction; relative change in %
    assert summary_lines(aggregate, TIMING)[0].startswith("VERDICT (25 prompts): HELPED")


TIMING = Timing(SideTiming(1.0, 10, 10.0, None), SideTiming(1.0, 10, 10.0, None), load_s=0.5, warm_up_s=0.1,
                compiled=False, merge_s=0.1, weights="fp32, adapter merged after the base side; 2 prompts per batch (test)",
                decoding="eager (test)", score_s=0.2)


class Cells(HTMLParser):
    """Collects the body rows of the answers table (not the figures tables) and checks that tags
    nest properly."""

    def __init__(self):
        super().__init__()
        self.stack, self.rows, self.in_body, self.in_answers = [], [], False, False

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "img", "input", "br", "col"):  # void elements: no end tag
            self.stack.append(tag)
        if tag == "table":
            self.in_answers = dict(attrs).get("class") == "answers"
        if tag == "tbody" and self.in_answers:
            self.in_body = True
        if tag == "tr" and self.in_body:
            self.rows.append({"attrs": dict(attrs), "text": ""})

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "tbody":
            self.in_body = False

    def handle_data(self, data):
        if self.in_body and self.rows:
            self.rows[-1]["text"] += data


def test_html_report_parses_and_holds_every_prompt(lexicon):
    pairs = [(POOR, GOOD), (GOOD, "<script>alert(1)</script> & 头痛\x1b[31m"), ("", "，。")] * 67  # 201 prompts
    rows, aggregate = score(samples(pairs, departments=("心血管内科", "儿科", None)), lexicon)
    settings = Settings("run", "tiny", "fp32", "eager", "glm3", 201, "eval.txt", "greedy", 8, 4, 42, "terms.txt", "cpu",
                        1, "0 of 201 prompts were seen in training", "none (no --benchmark)")
    page = render(Report(settings, aggregate, TIMING, rows), b"\x89PNG fake")
    parser = Cells()
    parser.feed(page)
    parser.close()
    assert parser.stack == [] and len(parser.rows) == 201
    assert [int(r["attrs"]["data-index"]) for r in parser.rows] == list(range(1, 202))
    assert all(f"问题{i}？" in r["text"] for i, r in enumerate(parser.rows))
    body = page.split("<table class=\"answers\">")[1].split("</table>")[0]
    assert "<script>alert(1)</script>" not in body and "头痛\\x1b[31m" in body  # text, never markup or escapes
    assert page.count("<script>") == 1 and "http" not in page.replace("http-equiv", "")  # no network
    # the blind review's data: every prompt, an answer holding markup kept as text
    data = json.loads(page.split('<script type="application/json" id="review-data">')[1].split("</script>")[0])
    assert len(data["prompts"]) == 201 and data["report"] == settings.report_id
    assert "<script>alert(1)</script> & 头痛\x1b[31m" in data["prompts"][1]["answers"]
    flagged = [r for r in parser.rows if r["attrs"].get("class") == "flagged"]
    assert len(flagged) == 67  # the ("", "，。") rows


def test_few_prompts_never_read_as_a_difference(lexicon):
    _, aggregate = score(samples([(POOR, GOOD)] * 5), lexicon)  # a clear win, but on 5 prompts
    verdict = aggregate.verdict
    assert verdict.headline.startswith("CANNOT TELL: 5 prompts are too few")
    assert verdict.sentences[0].startswith("no reliable difference")
    assert any(s.startswith("only 5 prompts: too few") for s in verdict.sentences)


def test_a_degenerate_tuned_side_is_not_helped_even_beside_a_worse_base(lexicon):
    # base: 24 of 30 punctuation; tuned: 18 of 30, and closer to the references on the rest
    pairs = [("，。", "，。")] * 18 + [("，。", GOOD)] * 6 + [(POOR, GOOD)] * 6
    _, aggregate = score(samples(pairs), lexicon)
    assert aggregate.verdict.headline.startswith("NOT HELPED")
    assert "18 of 30 punctuation-only (base: 24 of 30 punctuation-only)" in aggregate.verdict.sentences[0]


LOOP = "头痛头痛头痛头痛头痛头痛头痛头痛"


def test_each_sides_degenerate_count_names_its_own_flag(lexicon):
    # the CPU demo's case: every tuned answer punctuation, 20 base answers looping, none punctuation
    pairs = [(LOOP, "，。")] * 20 + [(POOR, "，。")] * 7
    aggregate = score(samples(pairs), lexicon)[1]
    assert aggregate.flags.base["repetitive"] == 20 and aggregate.flags.base["punctuation-only"] == 0
    assert aggregate.verdict.sentences[0] == ("fine-tuned answers degenerate: 27 of 27 punctuation-only "
                                              "(base: 20 of 27 repetitive); no score below counts as an improvement")
    # below the broken share, both sides are still counted per flag
    pairs = [(LOOP, POOR), ("", POOR), (POOR, "，。")] + [(POOR, GOOD)] * 27
    assert score(samples(pairs), lexicon)[1].verdict.sentences[0] == (
        "degenerate answers: base 1 of 30 empty, 1 of 30 repetitive; fine-tuned 1 of 30 punctuation-only")
    pairs = [("，。", "，。")] * 10 + [(POOR, GOOD)] * 20
    assert "(base: 10 of 30 punctuation-only)" in score(samples(pairs), lexicon)[1].verdict.sentences[0]
    pairs = [(POOR, "")] * 10 + [(POOR, GOOD)] * 20
    assert "10 of 30 empty (base: none)" in score(samples(pairs), lexicon)[1].verdict.sentences[0]


def test_differences_a_rounding_apart_have_no_interval_to_print():
    """Unequal differences whose bootstrap bounds come out equal (one float step apart) are read as
    alike, never as an interval [x, x] that no number of decimals can tell apart."""
    step = np.nextafter(0.1, 1.0)
    d = paired_interval([0.0] * 20, [0.1] * 19 + [step])
    assert d.low is None and d.high is None
    assert d.text(0.1) == "+0.100 (the same on all 20 prompts)"
