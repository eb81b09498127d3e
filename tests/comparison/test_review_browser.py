"""The blind review in a real browser (headless Chromium through Selenium): a reviewer names
themselves, rates every prompt of a tiny comparison by key and by click, reloads midway (the ratings
survive), downloads them; the sides' names, revealed one prompt at a time, say what was picked; a
second reviewer in the same browser starts afresh; and the fold-in's preference numbers are the
clicks made.
Skipped where Chromium or its driver is missing, except in CI, which installs both (.ci/run)."""

import json
import os
import shutil
import time

import pytest

from conftest import copy_run
from glmtune.comparison.job import compare, fold_ratings
from glmtune.comparison.review import unblind
from glmtune.core.config import CompareConfig

QUESTIONS = ["牙龈出血是怎么回事？ 刷牙时出血一周。,可能是牙龈炎，注意刷牙方法，定期洗牙。",
             "眼睛干涩怎么办？ 长期看电脑。,多眨眼，减少屏幕时间，可用人工泪液。",
             "脚踝扭伤怎么处理？ 打球时扭伤。,先冰敷抬高，加压包扎，不能负重要拍片。",
             "口腔溃疡反复发作？ 一月两三次。,注意休息补充维生素，反复不愈要查免疫。",
             "晕车怎么预防？ 坐车就吐。,坐前排看远处，提前服用晕车药。",
             "耳鸣是什么原因？ 夜里明显。,可能与疲劳噪音有关，持续不缓解查听力。"]
# The reviewer's choices, prompt by prompt, as pressed: 1 / 2 answer better, 0 tie
CHOICES = ["1", "2", "0", "1", "2", "1"]


def download(element, folder, reviewer):
    """Press 'download ratings' and read the file it saves."""
    element("rv-download").click()
    for _ in range(50):
        found = list(folder.glob(f"ratings-{reviewer}-*.json")) if folder.is_dir() else []
        if found and not list(folder.glob("*.crdownload")):
            return json.loads(found[0].read_text(encoding="utf-8"))
        time.sleep(0.1)
    raise AssertionError(f"no ratings file for {reviewer} in {folder}")


def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        driver = None
    if chromium is None or driver is None:
        message = "the browser test needs Chromium, chromedriver and selenium (Debian: chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs them")
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def chrome(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser()
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def test_a_reviewer_rates_reloads_downloads_and_the_verdict_counts_the_clicks(trained, tmp_path, chrome):
    from selenium.webdriver.common.by import By

    run = copy_run(trained, tmp_path)
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
    job = compare(CompareConfig(adapter=run, data=held_out, max_new_tokens=8, no_perplexity=True))
    page = job.output / "chatglm_comparison.html"
    prompts = [row.id for row in job.report.rows]

    def element(id_):
        return chrome.find_element(By.ID, id_)

    def press(key):
        chrome.find_element(By.TAG_NAME, "body").send_keys(key)

    chrome.get(page.as_uri() + "#review")
    assert element("rv-name-form").is_displayed() and not element("rv-main").is_displayed()  # asked once
    element("rv-name").send_keys("王医生")
    element("rv-name-form").submit()
    assert element("rv-l1").text == "" and element("rv-l2").text == ""  # labels hidden
    element("rv-note").send_keys("两个都不够具体")
    for key in CHOICES[:3]:
        press(key)
    assert (element("rv-count").text, element("rv-pos").text) == ("3", "4")
    chrome.refresh()  # a reload midway: the ratings, the position and the name survive
    assert (element("rv-count").text, element("rv-pos").text, element("rv-who").text) == ("3", "4", "王医生")
    press("\ue012")  # ArrowLeft: back to prompt 3, whose choice shows as pressed
    assert chrome.find_element(By.CSS_SELECTOR, '[data-choice="0"]').get_attribute("aria-pressed") == "true"
    press("\ue014")  # ArrowRight
    for choice in CHOICES[3:]:
        chrome.find_element(By.CSS_SELECTOR, f'[data-choice="{choice}"]').click()
    assert element("rv-count").text == str(len(QUESTIONS))
    wang = download(element, tmp_path / "downloads", "王医生")  # every rating blind: no name was shown
    assert wang["reviewer"] == "王医生" and wang["report"] == job.report.settings.report_id
    assert [r["choice"] for r in wang["ratings"]] == CHOICES and wang["ratings"][0]["note"] == "两个都不够具体"
    assert not any(r["revealed"] for r in wang["ratings"])
    # what the reviewer picked, read off the names revealed prompt by prompt (from the last back), which
    # hide again on the next prompt
    picked = {}
    for position in range(len(QUESTIONS), 0, -1):
        assert element("rv-pos").text == str(position) and element("rv-l1").text == ""
        element("rv-reveal").click()
        labels = {"1": element("rv-l1").text, "2": element("rv-l2").text}
        assert set(labels.values()) == {"base", "fine-tuned"}
        choice = CHOICES[position - 1]
        picked[position] = "tie" if choice == "0" else {"fine-tuned": "tuned", "base": "base"}[labels[choice]]
        press("\ue012")
    # a second reviewer on the same browser starts with none of the first one's ratings
    element("rv-rename").click()
    element("rv-name").clear()
    element("rv-name").send_keys("李医生")
    element("rv-name-form").submit()
    assert element("rv-count").text == "0"
    press("2")
    li = download(element, tmp_path / "downloads", "李医生")
    assert [r["choice"] for r in li["ratings"]] == ["2"]

    files = sorted((tmp_path / "downloads").glob("*.json"))
    report = fold_ratings(CompareConfig(adapter=run, ratings=files), lambda lines: None)
    preferred = [picked[i] for i in range(1, len(QUESTIONS) + 1)]
    assert preferred == [unblind(job.report.settings.report_id, p, c) for p, c in zip(prompts, CHOICES)]
    review = report.aggregate.review
    assert sorted(review.reviewers) == ["李医生", "王医生"] and review.agreement.prompts == 1
    wang_rated = [r.better for r in review.ratings if r.reviewer == "王医生"]
    assert wang_rated == preferred
    li_rated = [r.better for r in review.ratings if r.reviewer == "李医生"]
    overall = review.overall
    assert (overall.tuned, overall.ties, overall.base) == tuple((preferred + li_rated).count(s)
                                                                for s in ("tuned", "tie", "base"))
    written = json.loads((job.output / "chatglm_comparison.json").read_text(encoding="utf-8"))
    assert len(written["aggregate"]["review"]["ratings"]) == 7
    assert any(s.startswith(("reviewers prefer", "no reliable preference")) for s in
               written["aggregate"]["verdict"]["sentences"])
    assert "<h2>Blind review</h2>" in page.read_text(encoding="utf-8") and "王医生" in page.read_text(encoding="utf-8")
    assert "fine-tuned preferred" in (job.output / "chatglm_comparison.log").read_text(encoding="utf-8")
