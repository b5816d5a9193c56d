"""The docs site (mkdocs.yml) builds with --strict, and a real browser (headless Chromium) shows its landing page
with the study's verdict table and forest plot; no page of the built site has a broken local link or image."""

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIRED = bool(os.environ.get("PEFT_REPRO_REQUIRE_BROWSER"))  # CI (.ci/run): fail, never skip


def _need(found, what: str):
    if not found:
        (pytest.fail if REQUIRED else pytest.skip)(f"{what} is not installed (.ci/run installs it)")
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    _need(shutil.which("mkdocs") or (Path(sys.executable).parent / "mkdocs").is_file(), "mkdocs")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key):
                self.refs.append((tag, attrs[key]))


def test_every_local_link_and_image_of_the_built_site_resolves(site):
    pages = sorted(p.resolve() for p in site.rglob("*.html"))
    assert len(pages) >= 12
    parsed = {}
    for page in pages:
        parsed[page] = Links()
        parsed[page].feed(page.read_text())
    broken = []
    for page, links in parsed.items():
        for tag, ref in links.refs:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith(("//", "mailto:", "data:", "javascript:")):
                continue
            base = site if parts.path.startswith("/") else page.parent  # 404.html's links are site-absolute
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.name}: {tag} {ref}")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and target in parsed
                and unquote(parts.fragment) not in parsed[target].ids
            ):
                broken.append(f"{page.name}: {tag} {ref} (no such anchor)")
    assert broken == []


CHECK = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="page" src="index.html" style="width:1280px;height:2000px"></iframe>
<script>
document.getElementById("page").addEventListener("load", () => {
  const doc = document.getElementById("page").contentDocument;
  const images = [...doc.querySelectorAll("article img")].map(i => [i.getAttribute("src"), i.complete, i.naturalWidth]);
  const tables = [...doc.querySelectorAll("article table")].map(t => ({
    head: [...t.querySelectorAll("th")].map(th => th.textContent.trim()),
    rows: [...t.querySelectorAll("tbody tr")].map(r => [...r.querySelectorAll("td")].map(td => td.textContent.trim())),
    links: [...t.querySelectorAll("tbody a")].map(a => a.getAttribute("href"))}));
  const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  document.getElementById("result").textContent = JSON.stringify({images, tables,
    shown: [...doc.querySelectorAll("article img, article table")].map(box), title: doc.title});
});
</script></body></html>"""


def test_a_real_browser_shows_the_verdict_table_and_the_forest_plot(site, tmp_path):
    import json

    browser = _need(
        shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome"), "chromium"
    )
    (site / "check-landing.html").write_text(CHECK)
    try:
        done = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--allow-file-access-from-files",
                "--virtual-time-budget=10000",
                "--dump-dom",
                (site / "check-landing.html").as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        (site / "check-landing.html").unlink()
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1) != "pending", done.stderr[-2000:]
    page = json.loads(
        found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").replace("&quot;", '"')
    )
    assert page["title"].startswith("peft-repro")
    forest = [i for i in page["images"] if i[0].endswith("reports/study/plots/forest-claims.png")]
    assert forest and all(complete and width > 600 for _, complete, width in forest)  # loaded, decoded, drawn
    assert all(complete and width > 0 for _, complete, width in page["images"])  # no broken image on the page
    verdicts = [t for t in page["tables"] if t["head"][:1] == ["claim"] and "verdict" in t["head"]]
    assert len(verdicts) == 1
    table = verdicts[0]
    assert len(table["rows"]) >= 20
    column = table["head"].index("verdict")
    assert {row[column] for row in table["rows"]} <= {
        "reproduced",
        "contradicted",
        "inconclusive",
        "not decided",
        "not run",
    }
    assert all(link.startswith("reports/study/claims.html#") for link in table["links"])
    assert all(w > 100 and h > 100 for w, h in page["shown"])  # the table and the plot take room on the page


def test_the_readme_is_short_and_points_to_the_docs():
    """README.md: at most 200 lines; what the study found with the forest plot, the claims table, the two commands
    (test_lock.py checks them against .ci/run), and links to every docs page, each of which exists."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "## What the study found" in readme and "](reports/study/plots/forest-claims.png)" in readme
    assert "## The two commands" in readme and "## Where to go next" in readme
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert linked == pages - {"index.md"}, linked ^ (pages - {"index.md"})


def test_the_docs_give_the_readmes_two_commands():
    readme, quickstart = (REPO / "README.md").read_text(), (REPO / "docs" / "quickstart.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and all(command in quickstart for command in commands)
