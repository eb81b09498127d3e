"""The blind A/B review: people decide which answer is better.

The HTML report shows each prompt's two answers as "Answer 1" and "Answer 2" in an order drawn per
prompt from the report's id (`order`), so a reviewer cannot tell which is the fine-tuned one; the
page saves the ratings in the browser and downloads them as a JSON file. `fold` reads such files
(several reviewers, several sessions), keeps the latest rating per reviewer and prompt, and sums
them up: the share of prompts on which the fine-tuned answer is preferred (ties count half) with a
bootstrap interval over prompts, per department, the agreement between reviewers (Cohen's kappa for
two, Fleiss' kappa for more) and the prompts where reviewers and ROUGE-L disagree most.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from ..core.errors import DataError, few
from .report import SIDES, Agreement, Disagreement, Preference, Rating, Report, Review, Row
from .verdict import mean_interval

FORMAT = "glmtune-ratings/1"
CHOICES = ("1", "0", "2")  # the page's keys: answer 1 better, tie, answer 2 better
SCORE = {"tuned": 1.0, "tie": 0.5, "base": 0.0}
CATEGORIES = ("base", "tie", "tuned")
SHOWN_DISAGREEMENTS = 5


def order(report_id: str, prompt_id: str) -> tuple[str, str]:
    """The sides shown as Answer 1 and Answer 2 for a prompt: drawn from the report's id and the
    prompt's, so the order is fixed for the report and differs from prompt to prompt."""
    flip = hashlib.sha256(f"{report_id}:{prompt_id}".encode()).digest()[0] & 1
    return (SIDES[flip], SIDES[1 - flip])


def unblind(report_id: str, prompt_id: str, choice: str) -> str:
    """A blind choice ("1", "0" or "2") as the side it prefers: "base", "tie" or "tuned"."""
    if choice == "0":
        return "tie"
    return order(report_id, prompt_id)[int(choice) - 1]


def read_ratings(path: Path, report: Report) -> list[Rating]:
    """A downloaded ratings file, checked against the report it must come from; DataError in one line
    naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a ratings file the report's review saved ({type(err).__name__}); download "
                        "it again with the review's 'download ratings' button") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("ratings"), list):
        raise DataError(f"{path}: not a ratings file of a glmtune report (no \"format\": \"{FORMAT}\"); download it "
                        "with the review's 'download ratings' button")
    if not data["ratings"]:
        raise DataError(f"{path}: no ratings in it; rate at least one prompt before downloading")
    report_id = report.settings.report_id
    if data.get("report") != report_id:
        raise DataError(f"{path}: these ratings are for report {str(data.get('report'))[:8]}, not this one "
                        f"({report_id[:8]}); fold them into the comparison they came from (--output ITS_FOLDER)")
    reviewer = str(data.get("reviewer") or "").strip()
    if not reviewer:
        raise DataError(f"{path}: no reviewer name; rate again and give a name when the review asks")
    ids = {row.id for row in report.rows}
    unknown = [str(r.get("prompt") if isinstance(r, dict) else r) for r in data["ratings"]
               if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or r["prompt"] not in ids]
    if unknown:
        raise DataError(f"{path}: ratings for prompts this report does not have ({few(unknown)}); they came from "
                        "another comparison")
    out = []
    for r in data["ratings"]:
        choice = str(r.get("choice"))
        if choice not in CHOICES:
            raise DataError(f"{path}: prompt {r['prompt']} has choice {choice!r}; a rating is 1, 0 or 2")
        out.append(Rating(reviewer, r["prompt"], unblind(report_id, r["prompt"], choice), str(r.get("note") or ""),
                          path.name, str(r.get("at") or ""), bool(r.get("revealed"))))
    return out


def merge(earlier: list[Rating], new: list[Rating]) -> list[Rating]:
    """Every rating, the latest given per reviewer and prompt (a reviewer who came back to a prompt
    changed their mind), whatever order the files come in; where the times are equal or missing,
    the one folded in last."""
    latest: dict[tuple[str, str], Rating] = {}
    for rating in [*earlier, *new]:
        key = (rating.reviewer, rating.prompt)
        if key not in latest or rating.at >= latest[key].at:
            latest[key] = rating
    return list(latest.values())


def preference(name: str, rows: list[Row], ratings: list[Rating]) -> Preference | None:
    """The reviewers' preference over `rows`: None where none of them is rated."""
    by_prompt: dict[str, list[Rating]] = {}
    for rating in ratings:
        by_prompt.setdefault(rating.prompt, []).append(rating)
    rated = [by_prompt[row.id] for row in rows if row.id in by_prompt]
    if not rated:
        return None
    scores = [100 * sum(SCORE[r.better] for r in rs) / len(rs) for rs in rated]
    counts = Counter(r.better for rs in rated for r in rs)
    interval = mean_interval([s - 50 for s in scores])
    return Preference(name, len(rated), counts["tuned"], counts["tie"], counts["base"], sum(scores) / len(scores),
                      interval)


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Agreement of two raters beyond chance over the same items; None where chance agreement is
    certain (both gave one category throughout)."""
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in CATEGORIES) / n / n
    return None if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(items: list[list[str]]) -> float | None:
    """Agreement of the same number of raters per item beyond chance (Fleiss 1971)."""
    raters = len(items[0])
    counts = [Counter(item) for item in items]
    agreement = sum((sum(c[k] ** 2 for k in CATEGORIES) - raters) / (raters * (raters - 1)) for c in counts) / len(items)
    shares = [sum(c[k] for c in counts) / (len(items) * raters) for k in CATEGORIES]
    expected = sum(p * p for p in shares)
    return None if expected == 1 else (agreement - expected) / (1 - expected)


def agreement(reviewers: list[str], ratings: list[Rating]) -> Agreement | None:
    """How far the reviewers agree, over the prompts every one of them rated."""
    if len(reviewers) < 2:
        return None
    given = {(r.reviewer, r.prompt): r.better for r in ratings}
    prompts = [p for p in dict.fromkeys(r.prompt for r in ratings) if all((who, p) in given for who in reviewers)]
    if not prompts:
        return Agreement("Cohen's kappa" if len(reviewers) == 2 else "Fleiss' kappa", None, 0, len(reviewers))
    if len(reviewers) == 2:
        value = cohen_kappa(*([given[(who, p)] for p in prompts] for who in reviewers))
        return Agreement("Cohen's kappa", value, len(prompts), 2)
    return Agreement("Fleiss' kappa", fleiss_kappa([[given[(who, p)] for who in reviewers] for p in prompts]),
                     len(prompts), len(reviewers))


def disagreements(rows: list[Row], ratings: list[Rating]) -> list[Disagreement]:
    """Prompts where the reviewers lean one way and ROUGE-L the other, the strongest first."""
    by_prompt: dict[str, list[float]] = {}
    for r in ratings:
        by_prompt.setdefault(r.prompt, []).append(2 * SCORE[r.better] - 1)
    out = []
    for row in rows:
        votes, rouge = by_prompt.get(row.id), row.change.rougeL
        if votes and rouge is not None and (lean := sum(votes) / len(votes)) * rouge < 0:
            out.append(Disagreement(row.index, row.prompt, lean, rouge))
    return sorted(out, key=lambda d: (-abs(d.reviewers), -abs(d.rouge)))[:SHOWN_DISAGREEMENTS]


def fold(report: Report, files: list[Path]) -> Review:
    """The report's earlier ratings with those in `files`, summed up."""
    earlier = report.aggregate.review.ratings if report.aggregate.review else []
    ratings = merge(earlier, [r for path in files for r in read_ratings(path, report)])
    blind = [r for r in ratings if not r.revealed]  # a rating given with the names shown is not blind
    reviewers = list(dict.fromkeys(r.reviewer for r in blind))
    departments: dict[str, list[Row]] = {}
    for row in report.rows:
        if row.department:
            departments.setdefault(row.department, []).append(row)
    by_department = [p for name, rows in sorted(departments.items(), key=lambda kv: (-len(kv[1]), kv[0]))
                     if (p := preference(name, rows, blind)) is not None]
    return Review(reviewers, ratings, len(ratings) - len(blind), preference("all prompts", report.rows, blind),
                  by_department, agreement(reviewers, blind), disagreements(report.rows, blind))
