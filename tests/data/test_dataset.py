"""Our own dataset: complete, clean, varied, and usable by the tools."""

import statistics

import pytest

from glmtune.data.reading import parse_line, read_dataset

from conftest import REPO


DATA = REPO / "financial_data.txt"
DEPARTMENTS = REPO / "financial_data.departments.txt"  # one tag per data line


@pytest.fixture(scope="module")
def lines():
    return DATA.read_text(encoding="utf-8").splitlines()


def test_every_line_parses_into_question_and_answer(lines):
    assert len(lines) >= 500
    for number, line in enumerate(lines, 1):
        question, answer = parse_line(line)
        assert question and answer, number
        # our own lines have exactly one ASCII comma: the parser's choice is never a guess
        assert line.count(",") == 1 and answer == line.split(",", 1)[1], number


def test_reader_uses_every_line(lines):
    dataset = read_dataset(DATA)
    assert len(dataset.examples) == len(lines)
    assert not dataset.skipped and dataset.duplicates_removed == 0 and dataset.repaired == 0


def test_no_duplicates(lines):
    assert len(set(lines)) == len(lines)
    questions = [line.split("？", 1)[0] for line in lines]
    assert len(set(questions)) == len(questions)


def test_departments_span_the_specialties(lines):
    tags = DEPARTMENTS.read_text(encoding="utf-8").splitlines()
    assert len(tags) == len(lines)
    counts = {tag: tags.count(tag) for tag in set(tags)}
    assert len(counts) >= 12, counts
    assert min(counts.values()) >= 20, counts


def test_lengths_look_like_real_data(lines):
    lengths = [len(line) for line in lines]
    assert 150 <= statistics.median(lengths) <= 260
    assert sum(n < 110 for n in lengths) >= 0.05 * len(lines)
    assert sum(n > 400 for n in lengths) >= 0.05 * len(lines)
