"""The documentation a reader follows: every relative link, image and anchor resolves, and every `make` command the
README gives is a Makefile target that `make help` lists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.IGNORECASE)
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _docs() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code (a link inside code is an example, not a link)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but `-` and `_`), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.replace("`", "")).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in _FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(path: Path) -> list[str]:
    """Every relative link or image of a markdown file that does not resolve: a missing file or a missing heading."""
    problems = []
    text = _prose(path.read_text())
    for target in [*_LINK.findall(text), *_HTML_SRC.findall(text)]:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.name}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            problems.append(f"{path.name}: {target} (no heading '{anchor}' in {resolved.name})")
    return problems


def test_every_relative_link_and_image_resolves():
    assert (ROOT / "docs").is_dir()
    problems = [problem for path in _docs() for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_checker_finds_missing_files_images_and_headings(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("# A `code` title: yes\n\n## Twice\n\n## Twice\n")
    (tmp_path / "docs" / "figure.png").write_bytes(b"png")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n[ok](docs/here.md#a-code-title-yes) [ok](docs/here.md#twice-1) ![ok](docs/figure.png) [ok](#top)\n"
        "[web](https://example.org/missing.md) `[in code](missing.md)`\n```\n[in a block](missing.md)\n```\n"
        "[gone](docs/gone.md) ![gone](docs/gone.png) [bad](docs/here.md#nowhere) [bad](#nowhere)\n"
        '<img src="docs/also_gone.png">\n'
    )
    assert broken_links(page) == [
        "README.md: docs/gone.md (no such file)",
        "README.md: docs/gone.png (no such file)",
        "README.md: docs/here.md#nowhere (no heading 'nowhere' in here.md)",
        "README.md: #nowhere (no heading 'nowhere' in README.md)",
        "README.md: docs/also_gone.png (no such file)",
    ]


@pytest.fixture(scope="module")
def make_targets() -> set[str]:
    """The targets `make help` lists (the Makefile's self-documented ones)."""
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _make_commands(text: str) -> list[str]:
    """The targets of the `make TARGET` commands in a text's code (fenced blocks and inline code), in order."""
    code = "\n".join(
        match.group(0).strip("`") for match in re.finditer(f"{_FENCE.pattern}|`[^`\n]*`", text, re.M | re.S)
    )
    return re.findall(r"(?:^|[\s(;&|])make\s+([a-z][\w-]*)", code, re.MULTILINE)


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_the_readme_s_two_commands_and_its_results_command_are_make_targets(make_targets):
    readme = (ROOT / "README.md").read_text()
    first_block = _FENCE.search(readme)
    assert first_block and readme.index(first_block.group(0)) < readme.index("\n## "), "the commands come first"
    assert _make_commands(first_block.group(0))[:2] == ["demo", "test"]
    results = _section(readme, "Results")
    results_commands = [cmd for block in _FENCE.finditer(results) for cmd in _make_commands(block.group(0))]
    assert "demo" in results_commands, "the results table names the command that produced it"
    unknown = sorted(set(_make_commands(readme)) - make_targets)
    assert not unknown, f"README.md names make targets that `make help` does not list: {unknown}"


def test_every_make_command_in_docs_is_a_target(make_targets):
    unknown = {
        f"{path.name}: make {cmd}"
        for path in _docs()
        for cmd in _make_commands(path.read_text())
        if cmd not in make_targets
    }
    assert not unknown, sorted(unknown)


def test_citation_file_names_the_version_and_the_paper():
    import caef

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == caef.__version__ and cff["license"] == "MIT"
    assert all(key in cff for key in ("message", "title", "authors"))
    titles = [ref["title"] for ref in cff["references"]]
    assert any(title.startswith("Unlocking the Potential of Ordinary Classifier") for title in titles)
    assert f"## {caef.__version__} " in (ROOT / "CHANGELOG.md").read_text(), "CHANGELOG has a section per version"
