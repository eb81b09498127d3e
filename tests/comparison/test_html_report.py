"""The HTML report on any screen: responsive by construction (viewport, CJK fonts, tables that scroll
in their own box or reflow into cards, a chart no wider than the page), and, where Chromium is
installed, rendered at phone width without the page scrolling sideways."""

import json
import re
import shutil
import subprocess

import pytest

from glmtune.comparison.generation import Generated
from glmtune.comparison.knowledge import Exam, SideExam, summarize
from glmtune.data.benchmarks import Question
from glmtune.comparison.html_report import CJK_FONTS, NARROW, render
from glmtune.comparison.metrics import DEFAULT_LEXICON_PATH, Lexicon
from glmtune.comparison.plots import plot_aggregate
from glmtune.comparison.report import Report, Settings, SideTiming, Timing
from glmtune.comparison.scoring import Sample, score

REFERENCE = "建议低盐饮食，规律服用降压药，每天监测血压，头晕胸痛时及时就医。" * 3
ANSWERS = [("多喝热水，注意休息。", "低盐饮食，规律服用降压药，监测血压，有胸痛及时就医。"),
           ("头痛" * 200, "https://example.invalid/" + "a" * 300),  # a loop and one unbroken token
           ("", "，。")] * 4
TIMING = Timing(SideTiming(1.0, 10, 10.0, None), SideTiming(1.0, 10, 10.0, None), load_s=0.5, warm_up_s=0.1,
                compiled=False, merge_s=0.1, weights="fp32, adapter merged after the base side; 2 prompts per batch (test)",
                decoding="eager (test)", score_s=0.2)


def exam_results():
    """A knowledge check with long subject names and a long changed question."""
    questions = [Question(f"cmmlu/{s}/{i}", s, g, "下列关于" + "高血压" * 30 + "的说法正确的是", {"A": "甲", "B": "乙"}, "A")
                 for s, g in (("traditional_chinese_medicine", "medical"), ("elementary_information_and_technology",
                                                                       "general")) for i in range(20)]
    exam = Exam(questions, [""] * 40, ["cmmlu"], 0)
    return summarize(exam, "glm3", SideExam(["A", "B"] * 20, [], 1.0), SideExam(["B", "A"] * 20, [], 1.0))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A report with long answers, departments, a long adapter path and the real chart."""
    samples = [Sample(f"问题{i}：高血压患者能不能喝咖啡？平时血压控制在130/80左右。", REFERENCE,
                      {"base": Generated(b, max(1, len(b)), 1.0, 0.1, True),
                       "tuned": Generated(t, max(1, len(t)), 1.0, 0.1, False)},
                      department=("心血管内科", "儿科", None)[i % 3]) for i, (b, t) in enumerate(ANSWERS)]
    rows, aggregate = score(samples, Lexicon.load(DEFAULT_LEXICON_PATH), knowledge=exam_results())
    settings = Settings("/data/runs/" + "长" * 40 + "/chatglm3-medical-lora-2024", "tiny", "fp32", "eager", "glm3",
                        len(rows), "eval.jsonl", "greedy", 8, 4, 42, "terms.txt", "cpu", 1, "0 of 12 prompts were seen",
                        "cmmlu; 0-shot")
    chart = tmp_path_factory.mktemp("chart") / "chart.png"
    plot_aggregate(chart, aggregate)
    return render(Report(settings, aggregate, TIMING, rows), chart.read_bytes())


def test_the_report_is_responsive_by_construction(page):
    assert '<meta name="viewport" content="width=device-width,initial-scale=1">' in page
    style = page.split("<style>")[1].split("</style>")[0]
    # every font list names CJK fonts before its generic family, so Chinese never falls to a font without it
    fonts = re.findall(r"font(?:-family)?:([^;}]*)", style)
    assert fonts and all(CJK_FONTS in f and f.rstrip().endswith(("sans-serif", "monospace"))
                         for f in fonts if "," in f)
    assert '"Noto Sans CJK SC"' in CJK_FONTS and '"Microsoft YaHei"' in CJK_FONTS
    # the figures tables scroll in their own box, never the page
    # (metrics, departments, the knowledge check's groups, subjects and changed answers)
    assert page.count('<div class="wide"><table class="figures') == page.count('<table class="figures') == 5
    assert re.search(r"\.wide\{[^}]*overflow-x:auto", style)
    # the answers table reflows into cards on a narrow screen, each cell labelled with its column
    narrow = style.split(f"@media (max-width:{NARROW - 1}px)")[1]
    assert "table.answers tbody tr{display:grid" in narrow and "tr[hidden]{display:none}" in narrow
    assert 'td:nth-child(3)::before{content:"prompt"}' in page
    # answers wrap, even a token with no break opportunity
    assert re.search(r"div\.text\{[^}]*white-space:pre-wrap[^}]*overflow-wrap:anywhere", style)
    # the chart fills the width and never exceeds it
    assert '<div class="wide chart"><img' in page
    assert re.search(r"\.chart img\{[^}]*width:100%;max-width:100%", style)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed")
@pytest.mark.parametrize("width", [360, 420, 1400])
def test_the_page_never_scrolls_sideways(page, width, tmp_path):
    # Headless Chromium keeps its window at least 500 px wide, so the page is measured inside an
    # iframe of the width wanted, which reports its own layout to the page around it.
    probe = ("<script>addEventListener('load',()=>{const d=document.documentElement;"
             "parent.postMessage(JSON.stringify({scroll:d.scrollWidth,client:d.clientWidth}),'*')})</script>")
    (tmp_path / "report.html").write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    outer = tmp_path / "outer.html"
    outer.write_text(f'<!DOCTYPE html><body style="margin:0"><iframe src="report.html" style="border:0;'
                     f'width:{width}px;height:3000px"></iframe><pre id="r">none</pre><script>'
                     "addEventListener('message',e=>document.getElementById('r').textContent=e.data)</script>")
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          f"--window-size={max(width, 500)},3100", "--dump-dom", outer.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    layout = json.loads(dom.split('<pre id="r">')[1].split("</pre>")[0])
    assert layout["client"] > width - 20  # the report filled its frame (less a vertical scroll bar)
    assert layout["scroll"] == layout["client"], layout
