"""The README points only at files that a clone has: every relative link and every repository path
in backticks exists, nothing points outside the repository, and no tracked file is git-ignored."""
import re
import subprocess

from conftest import ROOT

README = (ROOT / "README.md").read_text()
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}


def linked_paths(text: str) -> set:
    """Targets of Markdown links and images that are not URLs or anchors."""
    return {t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not t.startswith(("http://", "https://", "#"))}


def backticked_paths(text: str) -> set:
    """`a/b/c` spans whose first part is a top-level entry of the repository (no placeholders)."""
    spans = re.findall(r"`([A-Za-z0-9_.][A-Za-z0-9_./-]*)`", text)
    return {s for s in spans if "/" in s and s.split("/")[0] in TOP}


def test_readme_links_exist():
    links = linked_paths(README)
    assert links, "the README has links to check"
    missing = [p for p in links if not (ROOT / p).exists()]
    assert not missing, missing


def test_readme_repository_paths_exist_and_are_tracked():
    paths = backticked_paths(README)
    assert {"experiments/paper/REPORT.md", "conf/setting/"} <= paths
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    untracked = [p for p in paths if not any(t == p.rstrip("/") or t.startswith(p.rstrip("/") + "/") for t in tracked)]
    assert not untracked, untracked


def test_nothing_in_the_readme_points_outside_the_repository():
    assert "../" not in README
    assert not re.search(r"(?<![\w.])/(?:home|work|tmp|root|Users)/", README)


def test_no_tracked_file_is_ignored():
    proc = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout == ""
