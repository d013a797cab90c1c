"""The documentation stays inside the repository and points at things that exist.

The README once sent readers to a path outside the checkout; every link it has must now lead to
a file of the repository. The other docs may link out, but their relative links must resolve,
and the tests ``docs/postfix-protocols.md`` names as evidence must still exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "packaging" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(document: Path) -> list[str]:
    return [
        target.split("#", 1)[0]
        for target in LINK.findall(document.read_text(encoding="utf-8"))
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]


def test_every_readme_link_points_inside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    outside = [target for target in LINK.findall(text) if re.match(r"[a-z]+:", target)]
    assert not outside, f"README links out of the repository: {outside}"
    assert "../" not in text, "README names a path outside the repository"


@pytest.mark.parametrize("document", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    for target in relative_links(document):
        path = (document.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{target} leaves the repository"
        assert path.exists(), f"{document.name}: {target} does not exist"


def test_the_tests_the_protocol_notes_cite_exist() -> None:
    text = (ROOT / "docs" / "postfix-protocols.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`", text))
    assert len(cited) >= 5, cited
    defined = {
        name
        for path in (ROOT / "tests").rglob("test_*.py")
        for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE)
    }
    assert not cited - defined, f"cited but not defined: {sorted(cited - defined)}"


def test_no_tracked_text_file_holds_merge_conflict_markers() -> None:
    """A merge once committed its conflict markers into the README and design.md unnoticed."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    marker = re.compile(rb"^(<<<<<<< |>>>>>>> |=======$)", re.MULTILINE)
    conflicted = [
        name.decode()
        for name in tracked
        if name
        and (ROOT / name.decode()).is_file()
        and marker.search((ROOT / name.decode()).read_bytes())
    ]
    assert not conflicted, f"merge conflict markers in {conflicted}"
