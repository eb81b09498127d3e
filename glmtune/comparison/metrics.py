"""Pure-text metrics for comparing base and fine-tuned answers.

Everything here works on strings only (no model, no GPU), so the comparison
script can score answers generated elsewhere. Chinese word segmentation is
delegated to jieba, ROUGE to rouge_chinese and BLEU to nltk.
"""

from __future__ import annotations

import logging
import statistics
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

with warnings.catch_warnings():
    # jieba 0.42 imports pkg_resources (deprecated loudly by setuptools >= 81), and where no bytecode
    # was compiled at install, Python 3.12 warns about its and rouge_chinese's regex escapes: noise
    # a user can do nothing about, on every run.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    import jieba
    from rouge_chinese import Rouge

DEFAULT_LEXICON_PATH = Path(__file__).parents[1] / "resources" / "medical_terms.txt"

Segmenter = Callable[[str], Sequence[str]]


# ---------------------------------------------------------------------------
# Length


def char_len(text: str) -> int:
    """Unicode characters of ``text`` after stripping leading/trailing whitespace.

    Interior whitespace is counted: generation often ends with stray newlines
    that say nothing about answer length, while interior spacing is content.
    """
    return len(text.strip())


def change_rate(base: float, tuned: float) -> float | None:
    """Relative change ``(tuned - base) / base``; None when ``base == 0`` (undefined)."""
    if base == 0:
        return None
    return (tuned - base) / base


# ---------------------------------------------------------------------------
# Medical-term lexicon


class TermDensity(NamedTuple):
    hits: int  # jieba tokens of the text that are lexicon terms
    per_100_chars: float  # hits * 100 / char_len(text)
    distinct: int  # distinct lexicon terms among those tokens


class Lexicon:
    """A set of medical terms, each with an optional category, and a jieba
    tokenizer that keeps every term in one piece.

    Each instance owns a private ``jieba.Tokenizer`` so that two lexicons (or a
    lexicon and the global ``jieba.cut``) never see each other's words.
    """

    def __init__(self, categories: Mapping[str, str | None]) -> None:
        """``categories`` maps each term to its category (None if it has none).

        Prefer :meth:`Lexicon.load`, which validates the file it reads.
        """
        self._categories = dict(categories)
        self.terms: frozenset[str] = frozenset(self._categories)
        # jieba logs "Building prefix dict..." to stderr at INFO on every
        # initialisation, which would drown the comparison script's output.
        jieba.setLogLevel(logging.WARNING)
        self._tokenizer = jieba.Tokenizer()
        for term in self._categories:
            # No explicit frequency: jieba then suggests one just high enough
            # for the term to be cut as a single word.
            self._tokenizer.add_word(term)
        # Every answer is segmented for term density, prompt overlap and ROUGE, every reference and
        # prompt for both sides: segmenting each text once cut jieba's share of scoring by two thirds.
        self._segmented: dict[str, tuple[str, ...]] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        """Read a lexicon file: one term per line, ``#`` lines are comments.

        A ``#`` line with text also names the category of the terms that
        follow it (``# 疾病``), until the next such line; terms before any ``#``
        line have no category. Raises ValueError naming the file and line for a
        blank line, a term containing whitespace or a duplicate term, and for a
        file with no terms at all.
        """
        path = Path(path) if path is not None else DEFAULT_LEXICON_PATH
        # utf-8-sig: editors on Windows may prepend a BOM, which would
        # otherwise become part of the first term.
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        categories: dict[str, str | None] = {}
        first_seen: dict[str, int] = {}
        category: str | None = None
        for lineno, line in enumerate(lines, start=1):
            if line.startswith("#"):
                header = line[1:].strip()
                if header:
                    category = header
                continue
            if not line.strip():
                raise ValueError(f"{path}:{lineno}: blank line")
            if any(ch.isspace() for ch in line):
                raise ValueError(f"{path}:{lineno}: term contains whitespace: {line!r}")
            if line in first_seen:
                raise ValueError(
                    f"{path}:{lineno}: duplicate term {line!r} (first on line {first_seen[line]})"
                )
            first_seen[line] = lineno
            categories[line] = category
        if not categories:
            raise ValueError(f"{path}: no terms")
        return cls(categories)

    def category(self, term: str) -> str | None:
        """Category of ``term`` (None if it was listed before any header); KeyError if unknown."""
        return self._categories[term]

    def segment(self, text: str) -> tuple[str, ...]:
        """jieba words of ``text`` (lexicon terms kept whole), whitespace tokens dropped."""
        if text not in self._segmented:
            self._segmented[text] = tuple(word for word in self._tokenizer.cut(text) if not word.isspace())
        return self._segmented[text]

    def term_density(self, text: str) -> TermDensity:
        """Lexicon terms among the jieba tokens of ``text``.

        Counting tokens rather than substrings means a term inside a longer
        word (头痛 in 偏头痛) is not a hit, matching how a reader sees it.
        """
        hits = [word for word in self.segment(text) if word in self.terms]
        n_chars = char_len(text)
        per_100 = len(hits) * 100 / n_chars if n_chars else 0.0
        return TermDensity(hits=len(hits), per_100_chars=per_100, distinct=len(set(hits)))


# ---------------------------------------------------------------------------
# Overlap with the prompt


class Overlap(NamedTuple):
    word: float  # share of the answer's distinct words found in the prompt
    bigram: float  # share of the answer's distinct char bigrams found in the prompt


def _is_noise(ch: str) -> bool:
    """Whitespace, punctuation (P*) or symbol (S*) character.

    Symbols are included because several ASCII punctuation marks (``+ < = > ~``
    etc.) are Unicode symbols, and full-width and ASCII forms should be treated
    alike.
    """
    return ch.isspace() or unicodedata.category(ch)[0] in "PS"


def content_chars(text: str) -> str:
    """``text`` without whitespace, punctuation and symbols: what an answer actually says."""
    return "".join(ch for ch in text if not _is_noise(ch))


def _words(text: str, segment: Segmenter) -> list[str]:
    return [word for word in segment(text) if not all(_is_noise(ch) for ch in word)]


def _content_words(text: str, segment: Segmenter) -> set[str]:
    return set(_words(text, segment))


def _content_bigrams(text: str) -> set[str]:
    chars = content_chars(text)
    return {chars[i : i + 2] for i in range(len(chars) - 1)}


def _covered(part: set[str], whole: set[str]) -> float:
    return len(part & whole) / len(part) if part else 0.0


def prompt_overlap(prompt: str, answer: str, segment: Segmenter) -> Overlap:
    """How much of the answer merely repeats the prompt.

    ``word``: fraction of the answer's distinct words (from ``segment``,
    punctuation-only tokens dropped) that also occur in the prompt.
    ``bigram``: fraction of the answer's distinct character bigrams, taken after
    removing whitespace and punctuation, that occur in the prompt. Both are 0.0
    when the answer has nothing to count.
    """
    return Overlap(
        word=_covered(_content_words(answer, segment), _content_words(prompt, segment)),
        bigram=_covered(_content_bigrams(answer), _content_bigrams(prompt)),
    )


# ---------------------------------------------------------------------------
# Against a reference answer


def rouge_zh(hyp: str, ref: str, segment: Segmenter) -> dict[str, float]:
    """ROUGE-1/2/L F-scores on segmented words, punctuation removed: ``{"rouge-1", "rouge-2", "rouge-l"}``.

    Uses rouge_chinese's scoring, as ChatGLM3's finetune_demo does: n-grams are
    counted as sets, and F carries a 1e-8 term in its denominator (identical
    texts give 0.999999995, not 1.0). Unlike finetune_demo, words that are only
    punctuation or symbols are dropped first: otherwise an answer of nothing but
    "，。" shares "words" with every reference and scores above zero.
    Empty input (after that) scores zero instead of raising ValueError like
    rouge_chinese does.
    """
    hyp_words, ref_words = _words(hyp, segment), _words(ref, segment)
    if not hyp_words or not ref_words:
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    scores = Rouge(metrics=["rouge-1", "rouge-2"]).get_scores(" ".join(hyp_words), " ".join(ref_words))[0]
    # rouge_chinese's ROUGE-L is this F over the LCS of the two word lists, but its LCS is a Python
    # dict-of-cells table: half of all scoring time for 256-token answers. Same numbers (tested).
    precision, recall = (lcs_length(hyp_words, ref_words) / len(words) for words in (hyp_words, ref_words))
    rouge_l = 2.0 * ((precision * recall) / (precision + recall + 1e-8))
    return {**{name: score["f"] for name, score in scores.items()}, "rouge-l": rouge_l}


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two word lists, a row of the dynamic programme
    at a time: with equal words marking where a row may step up by one over the row above, each
    row is the running maximum of that candidate row."""
    if not a or not b:
        return 0
    ids = {word: i for i, word in enumerate({*a, *b})}
    columns = np.array([ids[word] for word in b])
    row = np.zeros(len(b) + 1, dtype=np.int64)
    for word in a:
        candidate = np.where(columns == ids[word], row[:-1] + 1, row[1:])
        row[1:] = np.maximum.accumulate(candidate)
    return int(row[-1])


def char_bleu4(hyp: str, ref: str) -> float:
    """Character-level sentence BLEU-4 with NIST geometric smoothing (method3),
    whitespace, punctuation and symbols removed (so punctuation alone scores 0).

    Characters sidestep segmentation differences between hyp and ref. Texts
    shorter than 4 characters cannot reach 1.0 because their missing higher
    n-gram orders are smoothed, not skipped. 0.0 when hyp or ref is empty, or
    when they share no character (nltk returns 0 before smoothing).
    """
    hyp_chars = list(content_chars(hyp))
    ref_chars = list(content_chars(ref))
    if not hyp_chars or not ref_chars:
        return 0.0
    return float(
        sentence_bleu(
            [ref_chars],
            hyp_chars,
            weights=(0.25,) * 4,
            smoothing_function=SmoothingFunction().method3,
        )
    )


def distinct_n(texts: list[str], n: int) -> float:
    """Corpus-level distinct-n (Li et al., 2016) over characters.

    Distinct character n-grams divided by all character n-grams across
    ``texts``; whitespace is removed first and n-grams never span two texts.
    0.0 when there are no n-grams.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = 0
    seen: set[str] = set()
    for text in texts:
        chars = "".join(ch for ch in text if not ch.isspace())
        grams = [chars[i : i + n] for i in range(len(chars) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


# ---------------------------------------------------------------------------
# Degenerate answers

REPEAT_N, REPEAT_SHARE, REPEAT_MIN_NGRAMS = 4, 0.5, 8
FLAGS = ("empty", "punctuation-only", "repetitive", "truncated")


def repeated_ngram_share(text: str, n: int = REPEAT_N) -> float:
    """Share of the character n-grams (whitespace and punctuation removed) that repeat an earlier
    one: about 0 for prose, near 1 for a loop such as "头痛头痛头痛...". 0.0 with no n-gram."""
    chars = content_chars(text)
    grams = [chars[i : i + n] for i in range(len(chars) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def answer_flags(text: str, stopped: bool) -> list[str]:
    """What is wrong with an answer as an answer, in FLAGS order: empty, punctuation-only (no word
    at all), repetitive (at least REPEAT_SHARE of its 4-grams repeat, over REPEAT_MIN_NGRAMS or more),
    truncated (it hit the token limit instead of ending). The first three make it degenerate."""
    flags = []
    chars = content_chars(text)
    if not text.strip():
        flags.append("empty")
    elif not chars:
        flags.append("punctuation-only")
    elif len(chars) - REPEAT_N + 1 >= REPEAT_MIN_NGRAMS and repeated_ngram_share(text) >= REPEAT_SHARE:
        flags.append("repetitive")
    if not stopped:
        flags.append("truncated")
    return flags


def is_degenerate(flags: list[str]) -> bool:
    return any(flag in flags for flag in FLAGS[:3])


# ---------------------------------------------------------------------------
# Aggregation


def summarize(values: list[float | None]) -> dict[str, float | int | None]:
    """``{"mean", "median", "n"}`` over the non-None values.

    None marks an undefined per-sample value (e.g. a change rate from a zero
    base) and is left out rather than counted as zero; mean and median are None
    when nothing is left.
    """
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": statistics.fmean(kept), "median": statistics.median(kept), "n": len(kept)}
