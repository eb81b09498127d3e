"""Exam questions for the knowledge check: multiple-choice questions with their subject, their group
(medical: does the fine-tune know more medicine? general: did it forget the rest?) and the text both
sides of the comparison read.

Formats (`read_benchmark`, a file or a folder):
- CMMLU's CSV folders: `dev/` and `test/`, one `SUBJECT.csv` each, header `,Question,A,B,C,D,Answer`.
- C-Eval's: `dev/`, `val/`, `test/`, files `SUBJECT_dev.csv` ..., header `id,question,A,B,C,D,answer,
  explanation`. Its test split has no answers, so the first split with an answer column is scored.
- CMB's JSON: records with `question`, an `option` dict (`{"A": ...}`) and `answer` letters ("ACD"
  for 多项选择题), `exam_subject`; a JSON array or one record per line.
- A plain JSONL: `question`, `options` (a list, or a letter→text dict), `answer`, and optional
  `subject`, `group`, `id`.
A question's group is its `group` column or field where it has one, else the built-in map below,
which knows the subjects of CMMLU and C-Eval (CMB is all medicine); a subject it does not know is
counted as medical, and the check says how many were.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DataError, few
from .reading import decode_file, json_records, jsonl_records

GROUPS = ("medical", "general")
LETTERS = "ABCDEFGHIJ"
SPLITS = ("test", "val")  # scored: the first that holds answers (C-Eval's test split has none)
SHOTS_SPLIT = "dev"

# Subjects by group, as CMMLU (haonan-li/CMMLU) and C-Eval (SJTU-LIT/ceval) name their files.
MEDICAL_SUBJECTS = frozenset({
    # CMMLU: its medicine subcategory, and the biology subjects a medical exam asks
    "anatomy", "clinical_knowledge", "college_medical_statistics", "college_medicine", "genetics", "nutrition",
    "professional_medicine", "traditional_chinese_medicine", "virology",
    # C-Eval
    "basic_medicine", "clinical_medicine", "physician",
})
GENERAL_SUBJECTS = frozenset({
    # CMMLU
    "agronomy", "ancient_chinese", "arts", "astronomy", "business_ethics", "chinese_civil_service_exam",
    "chinese_driving_rule", "chinese_food_culture", "chinese_foreign_policy", "chinese_history",
    "chinese_literature", "chinese_teacher_qualification", "college_actuarial_science", "college_education",
    "college_engineering_hydrology", "college_law", "college_mathematics", "computer_science", "computer_security",
    "conceptual_physics", "construction_project_management", "economics", "education", "electrical_engineering",
    "elementary_chinese", "elementary_commonsense", "elementary_information_and_technology",
    "elementary_mathematics", "ethnology", "food_science", "global_facts", "high_school_biology",
    "high_school_chemistry", "high_school_geography", "high_school_mathematics", "high_school_physics",
    "high_school_politics", "human_sexuality", "international_law", "journalism", "jurisprudence",
    "legal_and_moral_basis", "logical", "machine_learning", "management", "marketing", "marxism", "marxist_theory",
    "modern_chinese", "philosophy", "professional_accounting", "professional_law", "professional_psychology",
    "public_relations", "security_study", "sociology", "sports_science", "world_history", "world_religions",
    # C-Eval
    "accountant", "advanced_mathematics", "art_studies", "business_administration", "chinese_language_and_literature",
    "civil_servant", "college_chemistry", "college_economics", "college_physics", "college_programming",
    "computer_architecture", "computer_network", "discrete_mathematics", "education_science",
    "electrical_engineer", "environmental_impact_assessment_engineer", "fire_engineer", "high_school_chinese",
    "high_school_history", "ideological_and_moral_cultivation", "law", "legal_professional", "logic",
    "mao_zedong_thought", "metrology_engineer", "middle_school_biology", "middle_school_chemistry",
    "middle_school_geography", "middle_school_history", "middle_school_mathematics", "middle_school_physics",
    "middle_school_politics", "modern_chinese_history", "operating_system", "plant_protection",
    "probability_and_statistics", "professional_tour_guide", "sports_science", "tax_accountant",
    "teacher_qualification", "urban_and_rural_planner",
    "veterinary_medicine",  # animals' medicine: not what a fine-tune on patients' questions is for
})

INSTRUCTIONS = {False: "以下是单项选择题，请直接给出正确答案的选项。", True: "以下是多项选择题，请直接给出所有正确答案的选项。"}


@dataclass(frozen=True)
class Question:
    id: str  # SOURCE/SUBJECT/N: names the question in the report, unique over every benchmark read
    subject: str
    group: str  # one of GROUPS
    question: str
    options: dict[str, str]  # letter -> text, in letter order
    answer: str  # the right letters, in letter order: "B", or "ACD" where several are right
    mapped: bool = True  # the group came from a group field or the built-in map, not the default

    @property
    def multiple(self) -> bool:
        return len(self.answer) > 1

    @property
    def chance(self) -> float:
        """The chance of a right answer by a blind pick of as many letters as are right."""
        return 1 / math.comb(len(self.options), len(self.answer))

    def block(self, with_answer: bool) -> str:
        """The question as an exam shows it; with its answer line as a worked example."""
        lines = [f"题目：{self.question}", *(f"{letter}. {text}" for letter, text in self.options.items())]
        return "\n".join(lines + ([f"答案：{self.answer}"] if with_answer else []))


@dataclass(frozen=True)
class Benchmark:
    source: str  # as the user named it
    questions: list[Question]
    shots: dict[str, list[Question]]  # subject -> its dev split's questions, for K-shot prompts


def prompt_text(question: Question, shots: list[Question]) -> str:
    """What the model reads as the user's turn: the instruction, `shots` worked examples, the
    question; its reply starts with the answer letter (the run's layout puts it there)."""
    return "\n\n".join([INSTRUCTIONS[question.multiple], *(s.block(True) for s in shots), question.block(False)])


def group_of(subject: str, given: str | None, where: str) -> tuple[str, bool]:
    """(the group, whether it was known): `given` (a group field) wins, then the built-in map."""
    if given:
        group = str(given).strip().lower()
        if group not in GROUPS:
            raise DataError(f"{where}: group {given!r} is not one of {', '.join(GROUPS)}")
        return group, True
    if subject in MEDICAL_SUBJECTS:
        return "medical", True
    if subject in GENERAL_SUBJECTS:
        return "general", True
    return "medical", False


def _answer_letters(value, options: dict[str, str], where: str) -> str:
    """The answer as letters in order ("ACD"), from "A", "A,C,D", "ACD" or ["A", "C"]."""
    raw = "".join(value) if isinstance(value, list) else str(value if value is not None else "")
    letters = re.sub(r"[\s,，、;；/]", "", raw).upper()
    if not letters:
        raise DataError(f"{where}: no answer; give the right option's letter ({', '.join(options)})")
    wrong = [ch for ch in letters if ch not in options]
    if wrong:
        raise DataError(f"{where}: answer {raw!r} is not among the options ({', '.join(options)})")
    return "".join(sorted(set(letters)))


def _options(value, where: str) -> dict[str, str]:
    """Letter -> text from a list or a dict; options left empty are not options (CMB pads some
    questions' option dicts to E)."""
    if isinstance(value, list):
        value = dict(zip(LETTERS, value))
    if not isinstance(value, dict):
        raise DataError(f"{where}: options must be a list or a letter→text object, not {type(value).__name__}")
    options = {str(k).strip().upper(): str(v).strip() for k, v in value.items() if v is not None and str(v).strip()}
    if len(options) < 2 or any(len(k) != 1 or k not in LETTERS for k in options):
        raise DataError(f"{where}: missing options; a question needs at least two, lettered A, B, ... "
                        f"(found {few(list(options)) or 'none'})")
    return dict(sorted(options.items()))


def make_question(source: str, subject: str, index: int, question, options, answer, group, where: str) -> Question:
    text = str(question or "").strip()
    if not text:
        raise DataError(f"{where}: empty question")
    opts = _options(options, where)
    group_name, mapped = group_of(subject, group, where)
    return Question(f"{source}/{subject}/{index}", subject, group_name, text, opts,
                    _answer_letters(answer, opts, where), mapped)


def _subject_of(path: Path) -> str:
    """CMMLU's anatomy.csv and C-Eval's anatomy_val.csv both name the subject anatomy."""
    return re.sub(r"_(dev|val|test)$", "", path.stem)


def read_csv(path: Path, source: str, scored: bool = True) -> list[Question]:
    """One subject's CSV in CMMLU's or C-Eval's layout (columns matched by name, case aside)."""
    text, _ = decode_file(path)
    rows = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(rows, [])]
    if not header:
        raise DataError(f"{path}: empty file; a benchmark CSV starts with a header such as ,Question,A,B,C,D,Answer")
    if "question" not in header:
        raise DataError(f"{path}:1: no Question column; a benchmark CSV's header is like ,Question,A,B,C,D,Answer")
    if "answer" not in header:
        raise DataError(f"{path}:1: no Answer column{' (C-Eval has no answers in test/: use val/)' if scored else ''}")
    letters = [(i, h.upper()) for i, h in enumerate(header) if len(h) == 1 and h.upper() in LETTERS]
    col = {name: header.index(name) for name in ("question", "answer", "group", "subject") if name in header}
    subject_default = _subject_of(path)
    questions = []
    for n, row in enumerate(_csv_rows(rows, path)):
        if not any(cell.strip() for cell in row):
            continue
        cells = {name: row[i] for name, i in col.items() if i < len(row)}
        subject = (cells.get("subject") or subject_default).strip()
        questions.append(make_question(source, subject, n, cells.get("question"),
                                       {letter: row[i] for i, letter in letters if i < len(row)},
                                       cells.get("answer"), cells.get("group"), f"{path}:{rows.line_num}"))
    if not questions:
        raise DataError(f"{path}: no questions below the header")
    return questions


def _csv_rows(rows, path: Path):
    """The CSV reader's rows, its errors (a field past the size limit, a NUL byte) as DataError."""
    try:
        yield from rows
    except csv.Error as err:
        raise DataError(f"{path}:{rows.line_num}: not readable as CSV ({err})") from None


def read_json(path: Path, source: str) -> list[Question]:
    """CMB's records or plain ones (`question`, `options`, `answer`, optional `subject`, `group`)."""
    text, _ = decode_file(path)
    records = json_records if path.suffix.lower() == ".json" else jsonl_records
    questions, seen = [], set()
    for n, (line_no, _, obj) in enumerate(records(text, path)):
        where = f"{path}:{line_no}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: not a question object (a JSON {type(obj).__name__})")
        options = obj.get("options", obj.get("option"))
        if options is None:
            raise DataError(f"{where}: missing options; give \"options\": [\"...\", \"...\"] or {{\"A\": \"...\"}}")
        cmb = "exam_subject" in obj or "exam_type" in obj
        subject = str(obj.get("subject") or obj.get("exam_subject") or obj.get("exam_class") or path.stem).strip()
        group = obj.get("group") or ("medical" if cmb else None)
        question = make_question(source, subject, obj.get("id", n), obj.get("question"), options, obj.get("answer"),
                                 group, where)
        if question.id in seen:
            raise DataError(f"{where}: id {obj.get('id')!r} is given twice in {subject}; each question needs its own")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise DataError(f"{path}: no questions in it")
    return questions


def read_file(path: Path, source: str, scored: bool = True) -> list[Question]:
    if path.suffix.lower() == ".csv":
        return read_csv(path, source, scored)
    if path.suffix.lower() in (".json", ".jsonl"):
        return read_json(path, source)
    raise DataError(f"{path}: not a benchmark file; give a .csv (CMMLU, C-Eval), .json (CMB) or .jsonl file, or "
                    "a folder of them")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".json", ".jsonl"))


def _has_answers(folder: Path) -> bool:
    """Whether a split's CSVs have answers: C-Eval's test split has no answer column, or an empty one."""
    first = next(iter(_files(folder)), None)
    if first is None or first.suffix.lower() != ".csv":
        return first is not None
    rows = csv.reader(io.StringIO(decode_file(first)[0], newline=""))
    header = [h.strip().lower() for h in next(rows, [])]
    row = next(rows, [])
    return "answer" in header and header.index("answer") < len(row) and bool(row[header.index("answer")].strip())


def read_benchmark(path: Path, source: str | None = None) -> Benchmark:
    """The questions of a benchmark file or folder, with the dev split's as worked examples."""
    source = source or path.name
    if path.is_file():
        return Benchmark(source, read_file(path, source), {})
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; give a benchmark folder (CMMLU's, C-Eval's), a .json or "
                        ".jsonl file, or a hub name: cmmlu, ceval, cmb")
    split = next((path / s for s in SPLITS if (path / s).is_dir() and _has_answers(path / s)), None)
    scored = _files(split if split is not None else path)
    if not scored:
        raise DataError(f"{path}: no benchmark files in it (.csv, .json or .jsonl, or the split folders "
                        f"{', '.join(SPLITS)} and {SHOTS_SPLIT} holding them)")
    questions = [q for file in scored for q in read_file(file, source)]
    shots: dict[str, list[Question]] = {}
    if (path / SHOTS_SPLIT).is_dir():
        for file in _files(path / SHOTS_SPLIT):
            for q in read_file(file, f"{source}-{SHOTS_SPLIT}", scored=False):
                shots.setdefault(q.subject, []).append(q)
    return Benchmark(source, questions, shots)


def select(benchmark: Benchmark, per_subject: int) -> list[Question]:
    """The first `per_subject` questions of each subject (0: all), in the file's order."""
    if not per_subject:
        return benchmark.questions
    taken: dict[str, int] = {}
    out = []
    for q in benchmark.questions:
        if taken.get(q.subject, 0) < per_subject:
            taken[q.subject] = taken.get(q.subject, 0) + 1
            out.append(q)
    return out


def shots_for(benchmark: Benchmark, question: Question, k: int) -> list[Question]:
    """The first `k` worked examples of the question's subject; DataError where its dev split has fewer."""
    if not k:
        return []
    examples = benchmark.shots.get(question.subject, [])
    if len(examples) < k:
        raise DataError(f"{benchmark.source}: {k}-shot prompts need {k} solved questions of {question.subject} in a "
                        f"{SHOTS_SPLIT}/ split, and it has {len(examples)}; use --benchmark-shots "
                        f"{len(examples)}, or a benchmark folder with a {SHOTS_SPLIT}/ split (CMMLU's, C-Eval's)")
    return examples[:k]
