"""The documentation stays usable: a short README with a working table of contents, relative
links that resolve in README.md and docs/*.md, and no reference to files outside the
repository or to issue numbers in any file of the working tree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_README_LINES = 500

#: what nothing in the repository may mention (written so this file does not match itself)
OUTSIDE_REFERENCE = re.compile(r"\.\./shared|shared[/]notes|shared[/]domain|[Ii]ssue #?[0-9]+")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return [m.group(1) for line in _prose_lines(path.read_text(encoding="utf-8"))
            for m in LINK.finditer(line)]


def _doc_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_slug_follows_github_rules() -> None:
    # Given headings with code, punctuation and accents
    # When they become anchors
    # Then they match the anchors GitHub makes
    assert _slug("The wire format (AMQP 0-9-1)") == "the-wire-format-amqp-0-9-1"
    assert _slug("Dead letters: `eeszt-gw dlq`") == "dead-letters-eeszt-gw-dlq"
    assert _slug("Doctors' logins: the eSZIG card") == "doctors-logins-the-eszig-card"
    assert _slug("eBeutaló") == "ebeutaló"


def test_readme_is_at_most_500_lines() -> None:
    # Given the README
    # When its lines are counted
    lines = README.read_text(encoding="utf-8").splitlines()
    # Then it is a guide, not a log
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (limit {MAX_README_LINES})"


def test_readme_starts_with_the_two_commands_then_the_contents() -> None:
    # Given the README's prose and code
    text = README.read_text(encoding="utf-8")
    # When the first code block and the contents heading are found
    first_block = text.index("```sh")
    contents = text.index("\n## Contents\n")
    # Then the two commands open it and the table of contents follows them
    assert "make demo" in text[first_block:contents] and "make test" in text[first_block:contents]
    assert text.index("\n## ") == contents, "the table of contents must be the first section"


def test_readme_contents_links_point_at_existing_headings() -> None:
    # Given the README's table of contents
    lines = _prose_lines(README.read_text(encoding="utf-8"))
    start = lines.index("## Contents") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("## "))
    toc = "\n".join(lines[start:end])
    # When its in-page links are collected
    targets = re.findall(r"\]\(#([^)]+)\)", toc)
    # Then there are links, and each names a heading of the README
    assert len(targets) >= 10
    missing = sorted(set(targets) - _anchors(README))
    assert not missing, f"README.md contents link to missing headings: {missing}"


def test_relative_links_point_at_existing_files_and_headings() -> None:
    # Given every link in README.md and docs/*.md
    broken = []
    for page in _doc_pages():
        for target in _links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            # When a relative link is resolved against its page
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            # Then the file exists, and so does the heading it names in a Markdown page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_no_file_refers_outside_the_repository_or_to_issue_numbers() -> None:
    # Given every tracked file, and every new file not ignored by git
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout.decode("utf-8", "replace").split("\0")
    offenders = []
    for name in filter(None, listed):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        # When its text is searched
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE_REFERENCE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    # Then nothing names a file outside the repository or an issue number
    assert not offenders, "references outside the repository:\n" + "\n".join(offenders)


def test_outside_reference_pattern_catches_what_it_must() -> None:
    # Given phrases the repository must not contain, and ones it may
    # When the pattern is applied
    # Then it finds the first kind only
    for bad in ("see ." + "./shared/x.md", "shared" + "/notes/stack-facts.md", "Iss" + "ue 6's targets",
                "iss" + "ue #12"):
        assert OUTSIDE_REFERENCE.search(bad), bad
    for good in ("the throughput targets", "STS issues by method", "a shared vhost"):
        assert not OUTSIDE_REFERENCE.search(good), good
