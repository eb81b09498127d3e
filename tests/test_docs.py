"""The README and the docs pages: every page linked, every Python snippet runs as written, and CI runs
the test command the README gives."""

import re

from conftest import REPO


def readme() -> str:
    return (REPO / "README_chatglm_finetuning.md").read_text(encoding="utf-8")


def test_the_readme_links_every_docs_page_and_each_link_resolves():
    linked = re.findall(r"\]\((docs/[^)]+)\)", readme())
    assert sorted(linked) == sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))
    assert all((REPO / link).is_file() for link in linked)


def test_python_snippets_in_the_docs_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pages = [REPO / "README_chatglm_finetuning.md", *sorted((REPO / "docs").glob("*.md"))]
    snippets = [snippet for page in pages
                for snippet in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "docs snippet", "exec"), {})


def test_ci_runs_the_readme_test_command():
    setup = re.search(r"```bash\n(.*?)```", readme(), flags=re.S).group(1)
    test_command = next(line for line in setup.splitlines() if "pytest" in line).split("#")[0].strip()
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8")
