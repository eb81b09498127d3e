"""The blind review's arithmetic and its checks: the blind order, ratings unblinded, preference with
ties counted half and its interval, agreement on hand-computed examples, a report read back whole,
ratings from elsewhere refused, and the verdict weighing what people preferred."""

import json
from fractions import Fraction

import pytest

from glmtune.comparison.generation import Generated
from glmtune.comparison.metrics import DEFAULT_LEXICON_PATH, Lexicon
from glmtune.comparison.report import Report, Settings, SideTiming, Timing
from glmtune.comparison.review import FORMAT, cohen_kappa, fleiss_kappa, fold, order, unblind
from glmtune.comparison.scoring import Sample, rejudge, score
from glmtune.core.errors import DataError

GOOD = "低盐饮食，规律服用降压药，监测血压，有胸痛及时就医。"
POOR = "多喝热水，注意休息。"
TIMING = Timing(SideTiming(1.0, 10, 10.0, None), SideTiming(1.0, 10, 10.0, None), 0.5, 0.1, False, 0.1, "fp32", "eager",
                0.2)


@pytest.fixture(scope="module")
def lexicon():
    return Lexicon.load(DEFAULT_LEXICON_PATH)


def make_report(lexicon, pairs, departments=("心血管内科", "儿科"), knowledge=None) -> Report:
    samples = [Sample(f"问题{i}：高血压能喝咖啡吗？", GOOD, {"base": Generated(b, 10, 1.0, 0.1, True),
                                                    "tuned": Generated(t, 10, 1.0, 0.1, True)},
                      department=departments[i % len(departments)]) for i, (b, t) in enumerate(pairs)]
    rows, aggregate = score(samples, lexicon, knowledge=knowledge)
    settings = Settings("run", "tiny", "fp32", "eager", "glm3", len(rows), "eval.jsonl", "greedy", 8, 4, 42,
                        "terms.txt", "cpu", 1, "0 of 30 prompts were seen in training", "none (no --benchmark)")
    return Report(settings, aggregate, TIMING, rows, ("0 of 30 prompts were seen in training",))


def ratings_file(path, report, reviewer, better: dict[int, str], report_id=None, at="", revealed=False):
    """A ratings file as the page downloads it: for prompt i the reviewer prefers better[i] (base,
    tie or tuned), pressed as the key the blind order puts that side under."""
    rid = report.settings.report_id
    rows = {r.index: r for r in report.rows}
    ratings = [{"prompt": rows[i].id, "note": "", "at": at, "revealed": revealed,
                "choice": "0" if side == "tie" else "1" if order(rid, rows[i].id)[0] == side else "2"}
               for i, side in better.items()]
    path.write_text(json.dumps({"format": FORMAT, "report": report_id or rid, "reviewer": reviewer,
                                "ratings": ratings}, ensure_ascii=False), encoding="utf-8")
    return path


def test_the_blind_order_is_fixed_per_report_and_drawn_per_prompt():
    shown = [order("report-a", f"p{i}")[0] for i in range(200)]
    assert shown == [order("report-a", f"p{i}")[0] for i in range(200)]  # the page and the fold agree
    assert 70 < shown.count("tuned") < 130  # about half each way
    assert shown != [order("report-b", f"p{i}")[0] for i in range(200)]
    shown_first = order("r", "p1")[0]
    other = "base" if shown_first == "tuned" else "tuned"
    assert [unblind("r", "p1", c) for c in "102"] == [shown_first, "tie", other]


def test_preference_counts_ties_half_with_an_interval_over_prompts(lexicon, tmp_path):
    report = make_report(lexicon, [(POOR, GOOD)] * 30)
    better = {i: "tuned" if i < 20 else "tie" if i < 25 else "base" for i in range(30)}
    review = fold(report, [ratings_file(tmp_path / "r.json", report, "张医生", better)])
    overall = review.overall
    assert (overall.prompts, overall.tuned, overall.ties, overall.base) == (30, 20, 5, 5)
    assert overall.share == pytest.approx(75.0)
    # per-prompt values 50 / 0 / -50 points from even: sd 38.2, standard error 7.0 points
    assert 58 < 50 + overall.difference.low < 64 and 86 < 50 + overall.difference.high < 92
    assert overall.difference.reliable
    assert [(d.name, d.prompts) for d in review.departments] == [("儿科", 15), ("心血管内科", 15)]
    assert review.agreement is None  # one reviewer


def test_agreement_on_hand_computed_examples():
    # Cohen: 50 prompts, both "tuned" 20, A tuned / B base 5, A base / B tuned 10, both base 15:
    # observed 0.7, chance 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa 0.4
    a = ["tuned"] * 20 + ["tuned"] * 5 + ["base"] * 10 + ["base"] * 15
    b = ["tuned"] * 20 + ["base"] * 5 + ["tuned"] * 10 + ["base"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["tie"] * 5, ["tie"] * 5) is None  # chance agreement is certain: undefined
    # Fleiss, 3 raters: per-prompt agreement 1, 1/3, 1/3, 1 (mean 2/3); category shares 5/12, 3/12, 4/12
    # (chance 50/144): kappa (2/3 - 25/72) / (1 - 25/72) = 23/47
    items = [["tuned"] * 3, ["tuned", "tuned", "base"], ["base", "base", "tie"], ["tie"] * 3]
    assert fleiss_kappa(items) == pytest.approx(float(Fraction(23, 47)))


def test_two_reviewers_agree_and_later_ratings_replace_earlier_ones(lexicon, tmp_path):
    report = make_report(lexicon, [(POOR, GOOD)] * 30)
    first_pass = ratings_file(tmp_path / "a1.json", report, "甲", {i: "tuned" for i in range(30)})
    review = fold(report, [first_pass])
    report = rejudge(report, review)
    # 甲 changes their mind on prompt 0 in a later session; 乙 rates 10 prompts
    again = ratings_file(tmp_path / "a2.json", report, "甲", {0: "base"})
    other = ratings_file(tmp_path / "b.json", report, "乙", {i: "tuned" if i % 2 else "tie" for i in range(10)})
    review = fold(report, [again, other])
    assert review.reviewers == ["甲", "乙"] and len(review.ratings) == 40
    assert next(r for r in review.ratings if r.reviewer == "甲" and r.prompt == report.rows[0].id).better == "base"
    assert review.agreement.measure == "Cohen's kappa" and review.agreement.prompts == 10
    assert (review.overall.tuned, review.overall.ties, review.overall.base) == (34, 5, 1)


def test_the_latest_rating_counts_and_ratings_made_with_names_shown_do_not(lexicon, tmp_path):
    report = make_report(lexicon, [(POOR, GOOD)] * 30)
    newer = ratings_file(tmp_path / "new.json", report, "甲", {0: "tuned", 1: "tuned"}, at="2026-12-07T10:00:00.000Z")
    older = ratings_file(tmp_path / "old.json", report, "甲", {0: "base"}, at="2026-12-06T10:00:00.000Z")
    shown = ratings_file(tmp_path / "shown.json", report, "乙", {i: "base" for i in range(30)}, revealed=True)
    review = fold(report, [newer, older, shown])  # the older file folded last still loses
    assert [r.better for r in review.ratings if r.reviewer == "甲"] == ["tuned", "tuned"]
    assert review.revealed == 30 and review.reviewers == ["甲"]  # 乙 saw the names on every prompt
    assert (review.overall.tuned, review.overall.base) == (2, 0)
    everyone_saw = fold(report, [shown])
    assert everyone_saw.overall is None
    assert rejudge(report, everyone_saw).aggregate.verdict.sentences[0].startswith("no blind rating yet")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(report="0" * 32), r"r.json: these ratings are for report 00000000, not this one"),
    (lambda d: d["ratings"].append({"prompt": "p99-deadbeef", "choice": "1"}),
     r"r.json: ratings for prompts this report does not have \(p99-deadbeef\)"),
    (lambda d: d.update(ratings=[]), r"r.json: no ratings in it"),
    (lambda d: d.update(reviewer=" "), r"r.json: no reviewer name"),
    (lambda d: d.pop("format"), r"r.json: not a ratings file of a glmtune report"),
    (lambda d: d["ratings"][0].update(choice="3"), r"r.json: prompt p1-\w+ has choice '3'"),
    (lambda d: d["ratings"][0].update(prompt=["p1"]), r"r.json: ratings for prompts this report does not have"),
])
def test_ratings_that_do_not_belong_are_refused_in_one_line(lexicon, tmp_path, change, message):
    report = make_report(lexicon, [(POOR, GOOD)] * 4)
    path = ratings_file(tmp_path / "r.json", report, "甲", {0: "tuned", 1: "base"})
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=message) as refused:
        fold(report, [path])
    assert "\n" not in str(refused.value)


def test_a_report_reads_back_whole_and_rejudged_without_ratings_says_the_same(lexicon):
    from glmtune.comparison.knowledge import Exam, SideExam, summarize
    from glmtune.data.benchmarks import Question

    questions = [Question(f"t/{g}/{i}", g, g, "题", {"A": "甲", "B": "乙"}, "A") for g in ("medical", "general")
                 for i in range(20)]
    exam = summarize(Exam(questions, [""] * 40, ["t"], 0), "glm3", SideExam(["A", "B"] * 20, [], 1.0),
                     SideExam(["A"] * 40, [], 2.0))
    report = make_report(lexicon, [(POOR, GOOD)] * 25 + [("", "，。")] * 5, knowledge=exam)
    again = Report.from_json(json.loads(json.dumps(report.to_json())))
    assert again == report  # every record, the knowledge check's included
    assert rejudge(again, None).aggregate.verdict == report.aggregate.verdict


def test_people_weigh_in_the_verdict(lexicon, tmp_path):
    closer = make_report(lexicon, [(POOR, GOOD)] * 30)  # ROUGE-L: the fine-tuned side is closer
    assert closer.aggregate.verdict.headline.startswith("HELPED: fine-tuned answers are closer")
    disliked = rejudge(closer, fold(closer, [ratings_file(tmp_path / "r.json", closer, "甲",
                                                          {i: "base" for i in range(30)})]))
    assert disliked.aggregate.verdict.headline.startswith(
        "MIXED: answers closer to the references, but reviewers prefer the base answers (0% fine-tuned)")
    worst = disliked.aggregate.review.disagreements  # people against ROUGE-L, on every prompt
    assert len(worst) == 5 and all(d.reviewers == -1 and d.rouge > 0 for d in worst)
    alike = make_report(lexicon, [(GOOD, POOR), (POOR, GOOD)] * 15)
    liked = rejudge(alike, fold(alike, [ratings_file(tmp_path / "s.json", alike, "甲",
                                                     {i: "tuned" if i % 3 else "tie" for i in range(30)})]))
    assert liked.aggregate.verdict.headline.startswith("HELPED: reviewers prefer the fine-tuned answers (83% [")
    assert liked.aggregate.verdict.sentences[0].startswith("reviewers prefer the fine-tuned answers: fine-tuned "
                                                           "preferred 83% [")


def test_folding_rewrites_the_report_in_place_and_keeps_what_is_not_its_own(lexicon, tmp_path):
    from glmtune.comparison.html_report import write_html
    from glmtune.comparison.job import fold_ratings
    from glmtune.comparison.scoring import summary_lines, write_log, write_report
    from glmtune.core.config import CompareConfig

    report = make_report(lexicon, [(POOR, GOOD)] * 30)
    adapter = tmp_path / "run"
    folders = [adapter / "comparison", adapter / "comparison-3"]  # comparison-2 deleted by the user
    for folder, written in zip(folders, [make_report(lexicon, [(POOR, GOOD)] * 3), report]):
        folder.mkdir(parents=True)
        write_log(folder / "chatglm_comparison.log", written, summary_lines(written.aggregate, written.timing), 5)
        write_html(folder / "chatglm_comparison.html", written, None)
        write_report(folder / "chatglm_comparison.json", written)
    (folders[1] / "notes.txt").write_text("my notes", encoding="utf-8")
    first_file = ratings_file(tmp_path / "a.json", report, "甲", {i: "tuned" for i in range(30)})
    fold_ratings(CompareConfig(adapter=adapter, ratings=[first_file]), lambda lines: None)  # found by its id
    second = ratings_file(tmp_path / "b.json", report, "乙", {i: "base" for i in range(5)})
    fold_ratings(CompareConfig(adapter=adapter, ratings=[second]), lambda lines: None)
    written = json.loads((folders[1] / "chatglm_comparison.json").read_text(encoding="utf-8"))
    assert written["aggregate"]["review"]["reviewers"] == ["甲", "乙"] and len(written["aggregate"]["review"]["ratings"]) == 35
    assert sorted(p.name for p in folders[1].iterdir()) == ["chatglm_comparison.html", "chatglm_comparison.json",
                                                           "chatglm_comparison.log", "notes.txt"]  # no lock left
    assert (folders[1] / "notes.txt").read_text(encoding="utf-8") == "my notes"
    assert "blind review: 35 ratings by 2 reviewers" in (folders[1] / "chatglm_comparison.log").read_text("utf-8")
    untouched = json.loads((folders[0] / "chatglm_comparison.json").read_text(encoding="utf-8"))
    assert untouched["aggregate"]["review"] is None  # the other report keeps no rating of this one's
    elsewhere = ratings_file(tmp_path / "c.json", report, "丙", {0: "tie"}, report_id="f" * 32)
    with pytest.raises(DataError, match=r"c.json: these ratings are for a report that is not in comparison, "
                                        r"comparison-3; pass the report's folder with --output"):
        fold_ratings(CompareConfig(adapter=adapter, ratings=[elsewhere]), lambda lines: None)


def test_a_fold_in_and_an_overwriting_comparison_never_write_one_report_at_once(trained, tmp_path, lexicon):
    from conftest import copy_run
    from glmtune.comparison.job import compare, fold_ratings
    from glmtune.core.config import CompareConfig
    from glmtune.core.errors import RunDirError
    from glmtune.core.folders import claim

    run = copy_run(trained, tmp_path)
    job = compare(CompareConfig(adapter=run, max_new_tokens=2, num_samples=2, no_perplexity=True))
    rated = ratings_file(tmp_path / "r.json", job.report, "甲", {0: "tuned"})
    folding = claim(job.output, "folding ratings into the report")  # a fold-in under way
    with pytest.raises(RunDirError, match="folding ratings into the report"):
        compare(CompareConfig(adapter=run, max_new_tokens=2, num_samples=2, no_perplexity=True, overwrite=True))
    folding.abandon()
    comparing = claim(job.output, "comparing (replacing its report)")  # an overwrite under way
    with pytest.raises(RunDirError, match="comparing \\(replacing its report\\)"):
        fold_ratings(CompareConfig(adapter=run, ratings=[rated]), lambda lines: None)
    comparing.abandon()
    fold_ratings(CompareConfig(adapter=run, ratings=[rated]), lambda lines: None)
    assert not (job.output / ".glmtune.lock").exists()
