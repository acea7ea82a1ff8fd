"""mkdocs hook: the results pages are the studies' own READMEs, not copies.

Each `experiments/<study>/README.md` that exists becomes the page `results/<study>/README.md` (mkdocs makes
a README its folder's index page, so links between studies' READMEs resolve), and every
file it links to (figures, tables, other Markdown, followed transitively) is added at the matching
place: a repository path under `experiments/` lands under `results/`, any other repository path at the
same path under the site root. So a study README's relative links (`local_slopes.png`,
`../paper/REPORT.md`) keep working on the site as they do on GitHub. The pages come from the
repository at build time (`File.generated(..., abs_src_path=...)`), and the Results section of the nav
lists the studies whose README exists.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

STUDIES = ["paper", "science", "large_n", "sibling", "sigmoid_gating", "contamination", "benchmarks", "examples"]
TITLES = {
    "paper": "The paper's figures",
    "science": "Science: what Fig. 2 measured",
    "large_n": "Large n",
    "sibling": "The sibling softmax-gating study",
    "sigmoid_gating": "Sigmoid against softmax gating",
    "contamination": "The contamination test",
    "benchmarks": "Benchmarks",
    "examples": "Examples",
}
LINK = re.compile(r"\]\(([^)\s]+)\)|<img[^>]*src=\"([^\"]+)\"")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def docs_path(repo_path: str) -> str:
    """The site's path of a repository file: experiments/X -> results/X, anything else unchanged."""
    if repo_path.startswith("experiments/"):
        return "results/" + repo_path[len("experiments/") :]
    return repo_path


def _links(text: str) -> list:
    out = []
    for m in LINK.finditer(FENCE.sub("", text)):
        target = (m.group(1) or m.group(2)).split("#")[0]
        if target and not re.match(r"^[a-z]+:", target) and not target.startswith("/"):
            out.append(target)
    return out


def generated_files(root: Path) -> dict:
    """{path under docs/: absolute source path} for every study README and the files it links, transitively."""
    root = Path(root)
    out = {}
    todo = [f"experiments/{s}/README.md" for s in STUDIES if (root / "experiments" / s / "README.md").is_file()]
    seen = set()
    while todo:
        repo_path = todo.pop()
        if repo_path in seen:
            continue
        seen.add(repo_path)
        source = root / repo_path
        if not source.is_file() or (root / "docs" / repo_path).exists():
            continue
        out[docs_path(repo_path)] = str(source)
        if repo_path.endswith(".md"):
            base = posixpath.dirname(repo_path)
            for target in _links(source.read_text()):
                linked = posixpath.normpath(posixpath.join(base, target))
                if not linked.startswith("..") and (root / linked).is_file():
                    todo.append(linked)
    return out


def on_config(config, **kwargs):
    """List the studies that have a README under the nav's Results section."""
    root = Path(config["config_file_path"]).parent
    present = [s for s in STUDIES if (root / "experiments" / s / "README.md").is_file()]
    for section in config["nav"] or []:
        if isinstance(section, dict) and "Results" in section:
            section["Results"] = [
                e
                for e in section["Results"]
                if not (
                    isinstance(e, dict)
                    and "results/" in str(next(iter(e.values())))
                    and str(next(iter(e.values()))).split("/")[1] in STUDIES
                )
            ]
            section["Results"] += [{TITLES[s]: f"results/{s}/README.md"} for s in present]
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).parent
    for src_uri, source in sorted(generated_files(root).items()):
        if files.get_file_from_path(src_uri) is None:
            files.append(File.generated(config, src_uri, abs_src_path=source))
    return files
