"""Read medical Q&A data into (question, answer) examples.

The Q&A-line format is one record per line, ``title？ ask,answer``: a short question
up to its question mark, one space, a longer description, an ASCII comma and
the answer. The question used for training is title + ask. Scraped data bends
every part of that, so the separators are found by cues measured on real rows
(``bench/split_accuracy.py``):

* The title ends at the first ``？``/``?`` followed by whitespace, else at the
  first whitespace. Titles are short and rarely contain a space, while asks
  often contain ``？``.
* The ask/answer separator is one of the ASCII commas after that whitespace;
  commas also occur inside asks and answers, so each is scored:
  the ask side ends in ``？``/``?`` (+3), in ``。.！!；;``, a question particle
  or 谢谢 (+2); the answer side opens by addressing the asker (你/您/根据, +1)
  or in the asker's voice (我, -1) and goes on in full-width punctuation (+1),
  which a comma inside ASCII-punctuated text does not. A placeholder ask such
  as 无 is always the separator. Ties go to the earliest comma.

Every field is normalised the same way (:func:`clean_text`): literal ``\\n``
sequences become newlines, HTML entities are unescaped, odd spaces and control
characters are mapped, and outer whitespace is stripped.

CSV (``department,title,ask,answer``), JSONL and JSON files are read too;
:func:`read_dataset` picks the reader by file extension. JSON records are
question/answer pairs, alpaca instruction/input/output, or conversations:
ChatGLM3's finetune_demo ``{"conversations": [{"role", "content"}]}``,
ShareGPT ``{"conversations": [{"from", "value"}], "system"}`` and
``{"messages": [{"role", "content"}]}``, with an optional leading system turn.
A conversation becomes one example: its last user turn and reply, with the
earlier turns as ``history`` (the training loss covers every reply).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import html
import io
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..core.errors import DataError, RunDirError
from ..core.files import write_atomic

__all__ = [
    "DataError",
    "Dataset",
    "Example",
    "split_eval",
    "write_examples",
    "ParsedLine",
    "Skipped",
    "clean_text",
    "format_qa_line",
    "join_question",
    "parse_line",
    "parse_record",
    "prompt_digest",
    "read_dataset",
    "read_prompt_digests",
    "write_prompt_digests",
    "write_qa_lines",
]

PLACEHOLDER_ASKS = frozenset({"无", "无。", "暂无", "略"})
_PLACEHOLDER_SPAN = 8  # longest placeholder with whitespace around it

_QUESTION_END = "？?"
_SENTENCE_END = "。.！!；;"
_ASK_CLOSERS = ("吗", "呢", "么", "嘛", "谢谢")
# Doctors address the asker (你/您) or cite the description (根据); askers speak as 我.
_ANSWER_OPENERS = ("你", "您", "根据")
_ASKER_OPENER = "我"
_FULLWIDTH_DELIMS = "，。；！？"

_LITERAL_NEWLINE = re.compile(r"\\r\\n|\\n")
_DELIM = re.compile(r"[，。；！？,.;!?]")
# Whitespace other than space and newline, C0/C1 controls, zero-width characters, BOM.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ODD_CHAR = re.compile(r"\r\n?|[^\S \n]|[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_TITLE_END = re.compile(r"[？?](?=\s)")
_TITLE_MARK = re.compile(r"[？?](?=\S)")
# Written as character references so that they cannot be read as separators.
_QUESTION_ESCAPES = "&\\ \n"
_ANSWER_ESCAPES = "&\\,\n"
_RAW_CLIP = 200
TRAIN_PROMPTS = "train_prompts.sha256"
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ParsedLine:
    title: str
    ask: str
    question: str
    answer: str
    repairs: tuple[str, ...]


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    line_no: int  # 1-based line where the record starts
    history: tuple[tuple[str, str], ...] = ()  # earlier (user, assistant) turns of a conversation
    system: str | None = None  # a conversation's system prompt
    department: str | None = None  # where the data names one (CSV column, JSON field, the departments file beside Q&A lines)
    from_conversation: bool = False  # read from a conversation record, even one of a single exchange

    @property
    def conversational(self) -> bool:
        """Needs the chat layout: a system prompt or earlier turns."""
        return bool(self.history) or self.system is not None

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]:
        """ChatGLM3 chat messages: system, the turns, and the answer unless `with_answer` is False."""
        out = [{"role": "system", "content": self.system}] if self.system is not None else []
        for user, assistant in self.history:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        out.append({"role": "user", "content": self.question})
        if with_answer:
            out.append({"role": "assistant", "content": self.answer})
        return out


@dataclass(frozen=True)
class Skipped:
    line_no: int
    reason: str
    raw: str  # the record's text, clipped to 200 characters


@dataclass
class Dataset:
    path: Path
    format: str  # "qa-lines", "csv", "jsonl" or "json"
    encoding: str = "UTF-8"  # or the legacy encoding the file was recognised in
    examples: list[Example] = field(default_factory=list)
    lines_read: int = 0
    repaired: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, line of the copy kept)

    @property
    def duplicates_removed(self) -> int:
        return len(self.duplicates)

    @property
    def conversational(self) -> bool:
        return any(ex.conversational for ex in self.examples)

    def report_lines(self) -> list[str]:
        lines = [
            f"data: {self.path} ({self.format}, {self.encoding})",
            f"  lines read:         {self.lines_read}",
            f"  examples used:      {len(self.examples)} ({self.repaired} repaired)",
            f"  skipped:            {len(self.skipped)}",
        ]
        for reason, count in Counter(s.reason for s in self.skipped).most_common(3):
            lines.append(f"    {count:5d}  {reason}")
        shown = ", ".join(str(line) for line, _ in self.duplicates[:5]) + (", ..." if len(self.duplicates) > 5 else "")
        lines.append(f"  duplicates removed: {self.duplicates_removed}" + (f" (lines {shown})" if shown else ""))
        return lines

    def skipped_report(self) -> str:
        """Every record not used, with its line: unusable ones with the reason, then duplicates."""
        header = f"# {len(self.skipped)} skipped records and {len(self.duplicates)} duplicates in {self.path}\n"
        return (header + "".join(f"line {s.line_no}: {s.reason}: {s.raw!r}\n" for s in self.skipped)
                + "".join(f"line {line}: duplicate of line {first}\n" for line, first in self.duplicates))


# --- text normalisation ----------------------------------------------------------


def _fix_char(ch: str) -> tuple[str, str]:
    """Replacement and repair name for one match of _ODD_CHAR."""
    category = unicodedata.category(ch[-1])
    if ch[0] == "\r" or category in ("Zl", "Zp"):
        return "\n", "whitespace"
    if ch == "\t":
        return " ", "whitespace"
    if category == "Zs":
        return " ", "ideographic_space"
    return "", "control_chars"


def _clean(text: str) -> tuple[str, set[str]]:
    if bad := _SURROGATE.search(text):
        # Only a broken JSON escape ("\ud83d" without its pair) makes one; no tokenizer can encode it.
        raise ValueError(f"lone surrogate {bad.group()!r} at character {bad.start()} (a broken \\u escape, "
                         "usually half an emoji); fix or delete it")
    repairs: set[str] = set()
    if "\\n" in text:
        text = _LITERAL_NEWLINE.sub("\n", text)
        repairs.add("literal_newline")
    if "&" in text:
        unescaped = html.unescape(text)
        if unescaped != text:
            text = unescaped
            repairs.add("html_entities")

    def fix(match: re.Match[str]) -> str:
        replacement, repair = _fix_char(match.group())
        repairs.add(repair)
        return replacement

    text = _ODD_CHAR.sub(fix, text)
    stripped = text.strip()
    if stripped != text:
        repairs.add("whitespace")
    return stripped, repairs


def clean_text(text: str) -> str:
    """Normalise one field: literal \\n, HTML entities, odd spaces/controls, outer whitespace.
    ValueError for text that is not valid Unicode (a lone surrogate)."""
    return _clean(text)[0]


def _clean_title_ask(title: str, ask: str) -> tuple[str, str, set[str]]:
    title, repairs = _clean(title)
    ask, ask_repairs = _clean(ask)
    repairs |= ask_repairs
    if ask in PLACEHOLDER_ASKS:
        ask = ""
        repairs.add("placeholder_ask")
    return title, ask, repairs


def join_question(title: str, ask: str) -> str:
    """The training question for a title and ask: both cleaned, a placeholder ask dropped."""
    title, ask, _ = _clean_title_ask(title, ask)
    return title + ask


# --- Q&A lines ------------------------------------------------------------


def _separator_score(rest: str, i: int) -> int:
    """How much the ASCII comma at rest[i] looks like the ask/answer separator."""
    if i <= _PLACEHOLDER_SPAN and rest[:i].strip() in PLACEHOLDER_ASKS:
        return 100
    end = i
    while end > 0 and rest[end - 1].isspace():
        end -= 1
    start = i + 1
    while start < len(rest) and rest[start].isspace():
        start += 1
    score = 0
    if end and rest[end - 1] in _QUESTION_END:
        score += 3
    elif end and (rest[end - 1] in _SENTENCE_END or rest.endswith(_ASK_CLOSERS, 0, end)):
        score += 2
    if rest.startswith(_ANSWER_OPENERS, start):
        score += 1
    elif rest.startswith(_ASKER_OPENER, start):
        score -= 1
    delim = _DELIM.search(rest, start)
    if delim and delim.group() in _FULLWIDTH_DELIMS:
        score += 1
    return score


def _find_separator(text: str) -> int:
    """Index of the ask/answer comma in stripped, non-empty text; ValueError if there is none."""
    if "," not in text:
        raise ValueError("no ASCII comma separating question and answer")
    space = next((i for i, ch in enumerate(text) if ch.isspace()), -1)
    # Commas before the title's whitespace belong to the title, unless there is no other.
    offset = space + 1 if "," in text[space + 1 :] else 0
    rest = text[offset:]
    # text is stripped, so a comma leaves both sides non-blank unless it is at an end.
    commas = [i for i, ch in enumerate(rest) if ch == "," and 0 < offset + i < len(text) - 1]
    if not commas:
        raise ValueError("empty question" if text[0] == "," else "empty answer")
    return offset + max(commas, key=lambda i: (_separator_score(rest, i), -i))


def parse_record(line: str) -> ParsedLine:
    """Split one Q&A line into title, ask, question and answer.

    ``repairs`` names what had to be fixed. Raises ValueError with a readable
    reason when the line holds no usable pair.
    """
    repairs: set[str] = set()
    text = line
    # Before splitting, so that an escaped newline can separate title and ask.
    if "\\n" in text:
        text = _LITERAL_NEWLINE.sub("\n", text)
        repairs.add("literal_newline")
    if text != text.strip():
        text = text.strip()
        repairs.add("whitespace")
    if not text:
        raise ValueError("empty line")
    comma = _find_separator(text)
    head = text[:comma]
    title_end = _TITLE_END.search(head)
    cut = title_end.end() if title_end else next((i for i, ch in enumerate(head) if ch.isspace()), len(head))
    title, ask, field_repairs = _clean_title_ask(head[:cut], head[cut + 1 :])
    answer, answer_repairs = _clean(text[comma + 1 :])
    question, answer, repairs, *_ = _checked(title + ask, answer, repairs | field_repairs | answer_repairs)
    return ParsedLine(title, ask, question, answer, tuple(sorted(repairs)))


def parse_line(line: str) -> tuple[str, str]:
    """(question, answer) of one Q&A line; ValueError with a reason if unusable."""
    parsed = parse_record(line)
    return parsed.question, parsed.answer


# --- writing ----------------------------------------------------------------------


def _escape(text: str, chars: str) -> str:
    return "".join(f"&#{ord(ch)};" if ch in chars else ch for ch in text)


def format_qa_line(question: str, answer: str) -> str:
    """One Q&A line that parse_line reads back as exactly (question, answer).

    Supported: non-empty text with no outer whitespace and no characters that
    clean_text maps (tabs, CR, odd spaces, controls) -- i.e. anything clean_text
    returns. The line is ``title？ ask,answer`` with newlines written as literal
    ``\\n`` when that reads back exactly; otherwise characters that would be
    taken for separators (and ``&``, ``\\``) are written as HTML character
    references, which parse_line unescapes.
    """
    for name, text in (("question", question), ("answer", answer)):
        if not text or text != text.strip() or _ODD_CHAR.search(text):
            raise ValueError(f"{name} {text[:40]!r} is not normalised text; pass it through clean_text first")
    match = _TITLE_MARK.search(question)
    cut = match.end() if match else len(question)
    readable = f"{question[:cut]} {question[cut:]},{answer}".replace("\n", "\\n")
    try:
        if parse_line(readable) == (question, answer):
            return readable
    except ValueError:
        pass
    return f"{_escape(question, _QUESTION_ESCAPES)} ,{_escape(answer, _ANSWER_ESCAPES)}"


def write_qa_lines(examples: Iterable[Example], path: str | Path) -> None:
    """Write examples as UTF-8 Q&A lines (see format_qa_line).

    read_dataset gives back the same examples, in order, as long as they are
    distinct; ValueError if one holds text that clean_text would change.
    """
    write_atomic(Path(path), "".join(format_qa_line(ex.question, ex.answer) + "\n" for ex in examples))


def write_examples(examples: list[Example], folder: Path) -> Path:
    """Write an eval split where the comparison finds it: `eval.txt` as Q&A lines, or
    `eval.jsonl` when any example is a conversation (one of a single exchange too: it was given
    as one, and goes back as one) or names a department (Q&A lines have neither)."""
    if any(ex.conversational or ex.from_conversation or ex.department for ex in examples):
        def record(ex: Example) -> dict:
            as_messages = ex.conversational or ex.from_conversation
            fields = {"messages": ex.messages()} if as_messages else {"question": ex.question, "answer": ex.answer}
            return fields | ({"department": ex.department} if ex.department else {})

        path = folder / "eval.jsonl"
        write_atomic(path, "".join(json.dumps(record(ex), ensure_ascii=False) + "\n" for ex in examples))
        return path
    path = folder / "eval.txt"
    write_qa_lines(examples, path)
    return path


def prompt_digest(example: Example) -> str:
    """What an example's prompt is known by in a run folder: the SHA-256 of its system prompt, earlier
    turns and question, each reduced to its words however spaced. Conversations often end on the same
    short question ("没有。"); what came before it tells them apart."""
    parts = [example.system or "", *(text for turn in example.history for text in turn), example.question]
    return hashlib.sha256("\0".join(" ".join(part.split()) for part in parts).encode("utf-8")).hexdigest()


def write_prompt_digests(examples: list[Example], folder: Path) -> None:
    """The training prompts' digests, so that a comparison can tell held-out prompts from seen ones."""
    digests = sorted({prompt_digest(ex) for ex in examples})
    write_atomic(folder / TRAIN_PROMPTS, "".join(f"{d}\n" for d in digests))


def read_prompt_digests(folder: Path) -> set[str] | None:
    """The digests `write_prompt_digests` left in a run folder; None for a run trained before it did."""
    path = folder / TRAIN_PROMPTS
    if not path.is_file():
        return None
    digests = set(path.read_bytes().decode("ascii", "replace").split())
    if not all(_DIGEST.fullmatch(d) for d in digests):
        raise RunDirError(f"{path} is damaged; delete it to compare without checking which prompts the adapter "
                          "was trained on")
    return digests


def split_eval(examples: list, ratio: float, seed: int) -> tuple[list, list]:
    """A seeded split: the same examples and seed always hold out the same ones."""
    if not 0 <= ratio < 1:
        raise ValueError(f"eval ratio must be in [0, 1), not {ratio}")
    n_eval = round(len(examples) * ratio) if len(examples) > 1 else 0
    if ratio > 0:
        n_eval = min(max(n_eval, 1), len(examples) - 1)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    evaluation = [ex for i, ex in enumerate(examples) if i in held]
    return train, evaluation


# --- file readers -------------------------------------------------------------------

class _Pair(NamedTuple):
    question: str
    answer: str
    repairs: set[str]
    history: tuple[tuple[str, str], ...] = ()
    system: str | None = None
    department: str | None = None
    conversation: bool = False


_Records = Iterator[tuple[int, str, Any]]


class _Legacy(NamedTuple):
    """A legacy double-byte encoding, and the codes its everyday text is made of."""

    name: str
    codecs: tuple[str, ...]  # Python's names (iconv's too), the first that decodes a file reads it
    common: tuple[range, ...]  # double-byte codes of common symbols and characters
    min_trail: int  # EUC-style encodings put their common characters on trail bytes from 0xA1


# Bytes of any of these decode in the others too (GB18030 takes almost anything), but into
# characters rare there: kana and rare hanzi for Big5 read as GB18030, less frequent Big5 hanzi for
# GB text read as Big5. GB2312's symbols and hanzi; Big5's symbols and its frequent hanzi (A440-C67E);
# Shift_JIS's symbols, kana and level-1 kanji; EUC-KR's symbols and hangul.
_LEGACY = (
    _Legacy("GB18030", ("gb18030",), (range(0xA1A1, 0xA3FF), range(0xB0A1, 0xF7FF)), 0xA1),
    _Legacy("Big5", ("cp950", "big5hkscs"), (range(0xA140, 0xA3C0), range(0xA440, 0xC67F)), 0x40),
    _Legacy("Shift_JIS", ("cp932",), (range(0x8140, 0x8400), range(0x889F, 0x9873)), 0x40),
    _Legacy("EUC-KR", ("cp949",), (range(0xA1A1, 0xA3FF), range(0xB0A1, 0xC8FF)), 0xA1),
)
MIN_COMMON = 0.5  # of the non-ASCII characters, in the encoding chosen
MIN_LEAD = 0.25  # over the next most plausible encoding
DAMAGED_UTF8_AFTER = 20  # non-ASCII characters of valid UTF-8 before a bad byte that make a file damaged UTF-8


class _Reading(NamedTuple):
    share: float  # of the non-ASCII characters, the common ones in the encoding
    encoding: _Legacy
    codec: str
    text: str


def _common_share(text: str, encoding: _Legacy, codec: str) -> float:
    wide = {ch: n for ch, n in Counter(text).items() if not ch.isascii()}
    common = 0
    for ch, n in wide.items():
        code = ch.encode(codec, "replace")
        if len(code) == 2 and code[1] >= encoding.min_trail and any(int.from_bytes(code, "big") in r
                                                                    for r in encoding.common):
            common += n
    return common / max(1, sum(wide.values()))


def _readings(data: bytes) -> list[_Reading]:
    """Each legacy encoding that decodes `data`, most plausible first."""
    readings = []
    for encoding in _LEGACY:
        for codec in encoding.codecs:
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                continue
            readings.append(_Reading(_common_share(text, encoding, codec), encoding, codec, text))
            break
    return sorted(readings, key=lambda r: -r.share)


def _reads_as_chinese(text: str) -> bool:
    """Whether most of `text`'s non-ASCII characters are CJK ideographs or CJK/full-width punctuation."""
    wide = [ch for ch in text if not ch.isascii()]
    cjk = sum(1 for ch in wide if "\u4e00" <= ch <= "\u9fff" or "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef")
    return bool(wide) and cjk >= len(wide) / 2


def decode_file(path: Path) -> tuple[str, str]:
    """The text of a data file and the encoding it was read in: UTF-8, else the legacy encoding whose
    common characters it clearly is; DataError, with how to convert it, when none clearly is."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror})") from None
    # UTF-32's marks begin with UTF-16's: they are told apart first. Windows Notepad's "Unicode" is UTF-16.
    for name, marks in (("UTF-32", (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)),
                        ("UTF-16", (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))):
        if data.startswith(marks):
            try:
                return data.decode(name.lower()), name
            except UnicodeDecodeError:
                raise DataError(f"{path}: starts as {name} but is not {name} throughout; re-save it as UTF-8") from None
    try:
        return data.decode("utf-8-sig"), "UTF-8"
    except UnicodeDecodeError as err:
        line, bad = data.count(b"\n", 0, err.start) + 1, data[err.start]
        before = data[: err.start].decode("utf-8-sig")
    damaged = DataError(f"{path}:{line}: invalid UTF-8 byte 0x{bad:02x} after valid UTF-8 text; fix or delete that "
                        "byte, or re-save the file as UTF-8")
    # Much Chinese in UTF-8 before the bad byte: a damaged UTF-8 file. A little may be chance: a legacy
    # encoding's first characters can also be valid UTF-8 (GBK's 头痛 are two Greek letters, and
    # "楠宝" one CJK character and more), so the legacy readings are asked first.
    if _reads_as_chinese(before) and sum(not ch.isascii() for ch in before) >= DAMAGED_UTF8_AFTER:
        raise damaged
    readings = _readings(data)
    if not readings:
        if _reads_as_chinese(before):
            raise damaged
        names = [e.name for e in _LEGACY]
        raise DataError(f"{path}:{line}: file is neither UTF-8 nor {', '.join(names[:-1])} or {names[-1]} (byte "
                        f"0x{bad:02x} there is not UTF-8); re-save it as UTF-8")
    best, rival = readings[0], readings[1] if len(readings) > 1 else None
    if best.share >= MIN_COMMON and (rival is None or best.share - rival.share >= MIN_LEAD):
        return best.text, best.encoding.name
    if _reads_as_chinese(before):
        raise damaged
    shares = ", ".join(f"{r.encoding.name} {r.share:.0%}" for r in readings)
    likely = " or ".join(r.codec.upper() for r in readings[:2])
    raise DataError(f"{path}: not UTF-8, and no legacy encoding clearly fits (common characters when read as "
                    f"{shares}); convert it from the one it was saved in (likely {likely}): iconv -f ENCODING -t "
                    f"UTF-8 {path} > {path}.utf8, and train on the .utf8 file")


def _qa_line_records(text: str, path: Path) -> _Records:
    for line_no, line in enumerate(_lines(text), 1):
        if line.strip():
            yield line_no, line, line


def _qa_line_pair(line: str) -> _Pair:
    parsed = parse_record(line)
    return _Pair(parsed.question, parsed.answer, set(parsed.repairs))


def _csv_records(text: str, path: Path) -> _Records:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip().lower() for name in header]
        missing = [name for name in ("title", "ask", "answer") if name not in names]
        if missing:
            raise DataError(
                f"{path}:1: CSV header {header} lacks column(s) {', '.join(missing)}; "
                "the first row must name the columns department,title,ask,answer"
            )
        index = {name: names.index(name) for name in ("department", "title", "ask", "answer") if name in names}
        line_no = reader.line_num + 1
        for row in reader:
            if row:
                yield line_no, ",".join(row), (row, index, len(header))
            line_no = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err}); check the quoting near that line") from None


def _csv_pair(record: tuple[list[str], dict[str, int], int]) -> _Pair:
    row, index, width = record
    if len(row) != width:
        raise ValueError(f"row has {'fewer' if len(row) < width else 'more'} fields than the header")
    title, ask, repairs = _clean_title_ask(row[index["title"]], row[index["ask"]])
    answer, answer_repairs = _clean(row[index["answer"]])
    pair = _checked(title + ask, answer, repairs | answer_repairs)
    return pair._replace(department=_clean(row[index["department"]])[0] or None) if "department" in index else pair


def _json_error(path: Path, line_no: int, err: json.JSONDecodeError, what: str) -> DataError:
    return DataError(f"{path}:{line_no}: invalid JSON ({err.msg}, column {err.colno}); {what}")


def jsonl_records(text: str, path: Path) -> _Records:
    for line_no, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise _json_error(
                path, line_no, err, "each line of a .jsonl file must be one complete JSON object"
            ) from None
        except (RecursionError, ValueError) as err:  # nesting thousands deep; a 5,000-digit number
            raise DataError(f"{path}:{line_no}: JSON that cannot be read ({type(err).__name__}: {err}); "
                            "each line must be one question/answer or conversation object") from None
        yield line_no, line, obj


def json_records(text: str, path: Path) -> _Records:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise _json_error(path, err.lineno, err, "a .json file must hold one JSON array of objects") from None
    except (RecursionError, ValueError) as err:
        raise DataError(f"{path}: JSON that cannot be read ({type(err).__name__}: {err}); a .json file must "
                        "hold one JSON array of question/answer or conversation objects") from None
    if not isinstance(items, list):
        raise DataError(f"{path}:1: expected a JSON array of objects, found {type(items).__name__}")
    # Decode again element by element to learn the line each one starts on.
    decoder = json.JSONDecoder()
    pos, line_no = text.index("[") + 1, 1
    for _ in items:
        start = pos
        while text[pos] in " \t\r\n,":
            pos += 1
        line_no += text.count("\n", start, pos)
        obj, end = decoder.raw_decode(text, pos)
        yield line_no, text[pos:end], obj
        line_no += text.count("\n", pos, end)
        pos = end


def _string_field(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} is not a string")
    return value


_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def _conversation_pair(obj: dict[str, Any]) -> _Pair:
    """A ChatGLM3 / ShareGPT / messages conversation: its last exchange, earlier ones as history."""
    key = "messages" if "messages" in obj else "conversations"
    turns = obj[key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{key!r} is not a non-empty list of turns")
    system, repairs = None, set()
    if obj.get("system") is not None:  # ShareGPT keeps the system prompt beside the turns
        system, repairs = _clean(_string_field(obj, "system"))
    messages: list[tuple[str, str]] = []
    for number, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {number} is not an object")
        raw_role = turn.get("role", turn.get("from"))
        role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise ValueError(f"turn {number}: role {raw_role!r} is not system, user or assistant "
                             "(tool and observation turns are not supported)")
        text = turn.get("content", turn.get("value"))
        if not isinstance(text, str):
            raise ValueError(f"turn {number}: content is not a string")
        text, turn_repairs = _clean(text)
        repairs |= turn_repairs
        if not text:
            raise ValueError(f"turn {number}: empty {role} turn")
        if role == "system":
            if messages or system is not None:
                raise ValueError(f"turn {number}: a system turn may only come first")
            system = text
            continue
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turn {number}: expected a {expected} turn, found {role}")
        messages.append((role, text))
    if len(messages) % 2:
        raise ValueError("the last turn is a user turn with no reply")
    if not messages:
        raise ValueError("no user turn answered by an assistant turn")
    pairs = [(messages[i][1], messages[i + 1][1]) for i in range(0, len(messages), 2)]
    question, answer = pairs[-1]
    return _Pair(question, answer, repairs, tuple(pairs[:-1]), system or None, conversation=True)


def _json_pair(obj: Any) -> _Pair:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    pair = _json_content(obj)
    department = obj.get("department")
    return pair._replace(department=_clean(department)[0] or None) if isinstance(department, str) else pair


def _json_content(obj: dict[str, Any]) -> _Pair:
    if "messages" in obj or "conversations" in obj:
        return _conversation_pair(obj)
    if "question" in obj and "answer" in obj:
        question, repairs = _clean(_string_field(obj, "question"))
        answer_key = "answer"
    elif "instruction" in obj and "output" in obj:
        question, repairs = _clean(_string_field(obj, "instruction"))
        extra, extra_repairs = _clean(_string_field(obj, "input"))
        repairs |= extra_repairs
        question = f"{question}\n{extra}" if question and extra else question or extra
        answer_key = "output"
    else:
        raise ValueError("object has none of question/answer, instruction/output, conversations or messages")
    answer, answer_repairs = _clean(_string_field(obj, answer_key))
    return _checked(question, answer, repairs | answer_repairs)


def _checked(question: str, answer: str, repairs: set[str]) -> _Pair:
    if not question:
        raise ValueError("empty question")
    if not answer:
        raise ValueError("empty answer")
    return _Pair(question, answer, repairs)


class _Format(NamedTuple):
    name: str
    records: Callable[[str, Path], _Records]
    to_pair: Callable[[Any], _Pair]
    expected: str


_FORMATS = {
    ".csv": _Format("csv", _csv_records, _csv_pair, "CSV rows with title, ask and answer columns"),
    ".jsonl": _Format("jsonl", jsonl_records, _json_pair,
                      'one {"question", "answer"}, alpaca or conversation ("messages"/"conversations") object per line'),
    ".json": _Format("json", json_records, _json_pair,
                     'an array of {"question", "answer"}, alpaca or conversation objects'),
}
_QA_LINES = _Format("qa-lines", _qa_line_records, _qa_line_pair, "one 'title？ ask,answer' record per line")


def _lines(text: str) -> list[str]:
    """Lines ended by LF or CRLF; in a file with no LF at all (old Mac files), by CR, which would
    otherwise glue every record into the first one's answer. A stray CR inside an LF file stays in
    its record, where cleaning turns it into a newline."""
    lines = [line.removesuffix("\r") for line in text.split("\n")] if "\n" in text else text.split("\r")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _count_lines(text: str) -> int:
    return len(_lines(text))


def departments_file(path: Path) -> Path:
    """The optional file beside Q&A-line data that names each line's department, line by line
    (Q&A lines have no field for it): `financial_data.txt` -> `financial_data.departments.txt`."""
    return path.with_name(f"{path.stem}.departments.txt")


def _sidecar_departments(path: Path, lines: int) -> list[str | None] | None:
    sidecar = departments_file(path)
    if not sidecar.is_file():
        return None
    names = _lines(decode_file(sidecar)[0])
    if len(names) != lines:
        raise DataError(f"{sidecar}: {len(names)} lines, but {path} has {lines}; it must name one department per "
                        "line of the data file (or be deleted)")
    return [name.strip() or None for name in names]


def read_dataset(path: str | Path) -> Dataset:
    """Read a data file, chosen by extension: .csv, .jsonl, .json, else Q&A lines.

    Unusable records are skipped with a reason; exact duplicate pairs are
    dropped (first kept). Raises DataError if the file cannot be read or
    yields no usable example.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower(), _QA_LINES)
    text, encoding = decode_file(path)
    data = Dataset(path=path, format=fmt.name, encoding=encoding, lines_read=_count_lines(text))
    departments = _sidecar_departments(path, data.lines_read) if fmt is _QA_LINES else None
    seen: dict[tuple, int] = {}
    for line_no, raw, record in fmt.records(text, path):
        try:
            pair = fmt.to_pair(record)
        except ValueError as err:
            data.skipped.append(Skipped(line_no, str(err), raw[:_RAW_CLIP]))
            continue
        key = (pair.system, pair.history, pair.question, pair.answer)
        if key in seen:
            data.duplicates.append((line_no, seen[key]))
            continue
        seen[key] = line_no
        department = pair.department or (departments[line_no - 1] if departments else None)
        data.examples.append(Example(pair.question, pair.answer, line_no, pair.history, pair.system, department,
                                     pair.conversation))
        data.repaired += bool(pair.repairs)
    if not data.examples:
        reasons = Counter(s.reason for s in data.skipped).most_common(3)
        why = "; ".join(f"{reason}: {count}" for reason, count in reasons) or "no records"
        raise DataError(
            f"{path}: no usable examples in {data.lines_read} lines read ({why}); "
            f"a {path.suffix or 'Q&A-line'} file should hold {fmt.expected}"
        )
    return data
