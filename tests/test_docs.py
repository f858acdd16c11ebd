"""Every relative link and image in README.md and docs/*.md points at a file of the repository.

The README links into docs/ and bench/results/, and the docs link to each other and to headings;
files get moved (e.g. the CPU modules into a package), so a link that silently breaks is the
likely failure. Web links and same-page #anchors are not checked: the first need a network, the
second break nothing outside the page. For `file.md#anchor` the anchor must be a heading of that
file, by GitHub's rule for heading ids. Plain text parsing, no jax import: this test takes
milliseconds.
"""

from __future__ import annotations

import pathlib
import re
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target), the target optionally in <...> and followed by a "title".
_INLINE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target (reference definitions).
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_FENCE = re.compile(r"^\s*(```|~~~)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans, where links are not links."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            lines.append("")
            continue
        lines.append("" if in_fence else re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def links(text: str) -> list[str]:
    """The link and image targets of a markdown text, in order."""
    prose = _prose(text)
    found = [m.group(1) for m in _INLINE.finditer(prose)]
    found += [m.group(1) for m in _REFERENCE.finditer(prose)]
    return [t[1:-1] if t.startswith("<") else t for t in found]


def heading_ids(text: str) -> set[str]:
    """GitHub's ids of a markdown file's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2, ... appended to repeats."""
    ids: set[str] = set()
    for line in _prose(text).splitlines():
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link's text stays
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        unique, n = slug, 0
        while unique in ids:
            n += 1
            unique = f"{slug}-{n}"
        ids.add(unique)
    return ids


def _headings_with_code(path: pathlib.Path) -> set[str]:
    # Headings may hold inline code (`xla_cpu`), which _prose would drop: keep its text instead.
    text = re.sub(r"`([^`]*)`", r"\1", path.read_text(encoding="utf-8"))
    return heading_ids(text)


def broken_links(root: pathlib.Path) -> list[str]:
    """'file: target (why)' for every relative link of README.md and docs/*.md that does not
    resolve to a path inside root (or to a heading, for file.md#anchor)."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for md in files:
        if not md.is_file():
            continue
        for target in links(md.read_text(encoding="utf-8")):
            if _SCHEME.match(target) or target.startswith("#"):
                continue
            path_part, _, anchor = target.partition("#")
            path = (md.parent / urllib.parse.unquote(path_part)).resolve()
            where = f"{md.relative_to(root)}: {target}"
            if not path.is_relative_to(root.resolve()):
                broken.append(f"{where} (outside the repository)")
            elif not path.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _headings_with_code(path):
                broken.append(f"{where} (no heading #{anchor} in {path.name})")
    return broken


def test_readme_and_docs_links_resolve():
    assert broken_links(ROOT) == []


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Some `code` heading\n")
    (tmp_path / "pic.png").write_bytes(b"")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) ![ok](pic.png) [ok](docs/a.md#some-code-heading) [web](https://x.org/y)\n"
        "[anchor](#anywhere) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n```\n"
        "[gone](docs/missing.md) ![gone](img/none.png) [bad anchor](docs/a.md#nope)\n"
        "[up](../outside.md)\n[ref]: docs/also_missing.md\n")
    assert broken_links(tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: img/none.png (no such file)",
        "README.md: docs/a.md#nope (no heading #nope in a.md)",
        "README.md: ../outside.md (outside the repository)",
        "README.md: docs/also_missing.md (no such file)",
    ]


def test_heading_ids_follow_github():
    text = "# Where XLA:CPU spends the time\n## GPU: one NVIDIA H200\n## Notes\n## Notes\n"
    assert heading_ids(text) == {"where-xlacpu-spends-the-time", "gpu-one-nvidia-h200", "notes",
                                 "notes-1"}
