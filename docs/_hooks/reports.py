"""MkDocs hook: the study's verdicts on the landing page, from the files `python -m bench report study` writes.

- README.md's claims block (between bench.report_claims' HEADLINE markers) replaces `<!-- study verdicts -->` in
  docs/index.md, so the site and the README show the same table;
- reports/study/plots/*.png and reports/study/claims.md join the site at the same paths (reports/study/...), so
  pages link and embed them as the README does.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- study claims: start (python -m bench report study) -->", "<!-- study claims: end -->"
SHARED = [
    "reports/study/claims.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "reports/study/plots").glob("*.png")),
]


def on_files(files, config):
    for path in SHARED:
        if (ROOT / path).is_file() and files.get_file_from_path(path) is None:
            files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files):
    if "<!-- study verdicts -->" in markdown:
        readme = (ROOT / "README.md").read_text()
        block = readme.split(START, 1)[1].split(END, 1)[0].strip()
        markdown = markdown.replace("<!-- study verdicts -->", block)
    return markdown
