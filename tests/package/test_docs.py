"""The documentation's structure: every page reachable, every figure present and readable.

Sphinx checks much of this too, but only in the docs build; these checks run
with the test suite, in milliseconds, and say which file is at fault.
"""

from __future__ import annotations

import ast
import importlib
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
FIGURE = DOCS / "_static" / "snapshot-flow.svg"
SVG = "{http://www.w3.org/2000/svg}"

# A MyST directive block: ```{name} argument ... ``` or :::{name} argument ... :::.
_DIRECTIVE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<argument>[^\n]*)\n"
    r"(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
# A Markdown image: ![alt](path).
_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<path>[^)\s]+)[^)]*\)")


def _pages() -> list[Path]:
    """Every Markdown page Sphinx builds (docs/_build is excluded in conf.py)."""
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)


def _directives(page: Path, name: str) -> list[tuple[str, str]]:
    """The ``(argument, body)`` of each ``name`` directive on ``page``."""
    text = page.read_text(encoding="utf-8")
    return [
        (match["argument"].strip(), match["body"])
        for match in _DIRECTIVE.finditer(text)
        if match["name"] == name
    ]


def _toctree_entries(page: Path) -> list[Path]:
    """The pages that the toctrees of ``page`` list, as paths (which may not exist)."""
    entries = []
    for _, body in _directives(page, "toctree"):
        for raw_line in body.splitlines():
            line = raw_line.strip()
            if not line or line.startswith(":"):
                continue  # a blank line, or an option such as :maxdepth:
            target = re.fullmatch(r".*<(.+)>", line)  # "Title <target>"
            name = target[1] if target else line
            base = DOCS if name.startswith("/") else page.parent
            entries.append((base / name.lstrip("/")).with_suffix(".md").resolve())
    return entries


def _figure_paths(page: Path) -> list[tuple[Path, bool]]:
    """Each image that ``page`` shows, and whether it has alt text."""
    found = []
    for name in ("figure", "image"):
        for argument, body in _directives(page, name):
            has_alt = re.search(r"^[ \t]*:alt:[ \t]*\S", body, re.MULTILINE) is not None
            found.append((argument, has_alt))
    text = page.read_text(encoding="utf-8")
    found += [(match["path"], bool(match["alt"].strip())) for match in _IMAGE.finditer(text)]
    return [
        ((DOCS / path.lstrip("/")) if path.startswith("/") else (page.parent / path), has_alt)
        for path, has_alt in found
        if "://" not in path
    ]


def _figure() -> ET.Element:
    return ET.parse(FIGURE).getroot()  # noqa: S314 (our own file, not untrusted input)


def test_the_snapshot_figure_is_an_svg_with_a_view_box_and_a_title():
    root = _figure()
    assert root.tag == f"{SVG}svg"
    view_box = [float(n) for n in root.attrib["viewBox"].replace(",", " ").split()]
    assert len(view_box) == 4
    assert view_box[2] > 0
    assert view_box[3] > 0
    title = root.find(f"{SVG}title")
    assert title is not None
    assert (title.text or "").strip()
    # Screen readers read the title and the description, when the figure's
    # alt text doesn't reach them (the SVG opened on its own).
    desc = root.find(f"{SVG}desc")
    assert desc is not None
    assert len((desc.text or "").split()) >= 20


def test_the_snapshot_figure_loads_nothing_from_outside():
    # No scripts, no web fonts, no linked images: it must render the same
    # offline, in any viewer, and can't run code in the docs' origin.
    root = _figure()
    outside = []
    for element in root.iter():
        tag = element.tag.removeprefix(SVG)
        if tag in {"script", "foreignObject"}:
            outside.append(tag)
        for attribute, value in element.attrib.items():
            if attribute.endswith("href") and not value.startswith("#"):
                outside.append(f"{tag} {attribute}={value}")
            outside += [f"{tag} {attribute}: {url}" for url in _external_urls(value)]
        if tag == "style":
            text = element.text or ""
            if "@import" in text or "@font-face" in text:
                outside.append("style: @import or @font-face")
            outside += [f"style: {url}" for url in _external_urls(text)]
    assert outside == []


def _external_urls(text: str) -> list[str]:
    """The ``url(...)`` references in ``text`` that don't point inside the file."""
    return [url for url in re.findall(r"url\(\s*['\"]?([^)'\"]*)", text) if not url.startswith("#")]


def test_the_snapshot_figure_paints_its_own_background():
    # Furo's dark theme puts the image on a dark page: the figure must bring
    # its own light background, drawn first and covering the whole view box.
    root = _figure()
    drawn = [e for e in root if e.tag.removeprefix(SVG) not in {"title", "desc", "defs"}]
    assert drawn, "the figure draws something"
    background = drawn[0]
    assert background.tag == f"{SVG}rect"
    x, y, width, height = (float(n) for n in root.attrib["viewBox"].replace(",", " ").split())
    assert float(background.attrib.get("x", 0)) <= x
    assert float(background.attrib.get("y", 0)) <= y
    assert float(background.attrib["width"]) >= width
    assert float(background.attrib["height"]) >= height
    # A light colour, given explicitly (SVG's default fill is black).
    fill = background.attrib.get("fill", "")
    assert re.fullmatch(r"#[0-9a-fA-F]{6}", fill), f"background fill {fill!r}"
    red, green, blue = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    assert 0.2126 * red + 0.7152 * green + 0.0722 * blue >= 230
    assert background.attrib.get("fill-opacity", "1") == "1"


def test_the_snapshot_figure_is_shown_in_the_docs():
    shown_on = [
        page.relative_to(DOCS).as_posix()
        for page in _pages()
        for path, _ in _figure_paths(page)
        if path.resolve() == FIGURE
    ]
    assert shown_on == ["explanation/propagation.md"]


def test_every_figure_in_the_docs_exists_and_has_alt_text():
    figures = [(page, path, has_alt) for page in _pages() for path, has_alt in _figure_paths(page)]
    assert figures, "the docs show at least one figure"
    missing = [f"{page.name}: {path}" for page, path, _ in figures if not path.is_file()]
    no_alt = [f"{page.name}: {path.name}" for page, path, has_alt in figures if not has_alt]
    assert missing == []
    assert no_alt == []


def test_every_toctree_entry_names_a_page():
    broken = [
        f"{page.relative_to(DOCS)}: {entry.relative_to(DOCS)}"
        for page in _pages()
        for entry in _toctree_entries(page)
        if not entry.is_file()
    ]
    assert broken == []


def test_every_page_is_reachable_from_the_index_through_toctrees():
    root = (DOCS / "index.md").resolve()
    reached = {root}
    pending = [root]
    while pending:
        page = pending.pop()
        for entry in _toctree_entries(page):
            if entry.is_file() and entry not in reached:
                reached.add(entry)
                pending.append(entry)
    unreachable = [p.relative_to(DOCS).as_posix() for p in _pages() if p.resolve() not in reached]
    assert unreachable == []
    # The pages this test was written for, so that a parser that finds no
    # toctree at all can't pass it by finding no pages either.
    assert {
        "explanation/propagation.md",
        "explanation/free-threading.md",
        "explanation/pitfalls.md",
    } <= {p.relative_to(DOCS).as_posix() for p in reached}


def _python_blocks() -> list[tuple[str, str]]:
    """Every ``python`` fence in the docs and the README: code shown, not run by doctest."""
    fence = re.compile(r"^([ \t]*)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    blocks = []
    for page in [*_pages(), DOCS.parent / "README.md"]:
        for match in fence.finditer(page.read_text(encoding="utf-8")):
            code = textwrap.dedent("\n".join(line for line in match[2].splitlines()))
            blocks.append((f"{page.name}:{match.start()}", code))
    return blocks


def test_docs_show_python_blocks():
    # The checks below mean something only if they find the blocks.
    assert len(_python_blocks()) >= 10


def _syntax_error(code: str, where: str) -> str | None:
    # Snippets may show the body of a coroutine function: allow a bare await.
    try:
        compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError as error:
        return f"{where}: {error}"
    return None


def test_every_python_block_in_the_docs_compiles():
    errors = [_syntax_error(code, where) for where, code in _python_blocks()]
    assert [e for e in errors if e is not None] == []


def test_every_name_the_docs_import_from_contextual_exists():
    # The blocks that can't run here (they need a broker, a server, a
    # framework) still can't name an API that doesn't exist.
    missing = []
    for where, code in _python_blocks():
        tree = compile(code, where, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("contextual"):
                module = importlib.import_module(node.module or "")
                missing += [
                    f"{where}: {node.module}.{alias.name}"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                ]
    assert missing == []
