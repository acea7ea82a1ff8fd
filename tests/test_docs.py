"""Every page of the documentation runs: README.md and each page under docs/, one test per page.

The fenced blocks of a page run in order in a fresh temporary folder (the working directory, also on
sys.path), which starts with a copy of the repository's experiment scripts (`experiments/**/*.py`,
`*.sh`, `*.R`: a page may run `bash experiments/paper/reproduce.sh`; what they write stays in the
temporary folder). The info string of a block says what it is:

- ```python file="PATH" / ```yaml file="PATH": write the block to PATH (the quotes are what
  mkdocs' superfences needs to read the header; unquoted file=PATH works here too);
- ```python run: execute it in this process (one torch thread), its stdout captured; the python
  blocks of a page share one namespace, as the cells of a notebook do;
- ```bash: run it with bash -e, stdout captured. Attributes:
  - tiny="ARGS": the block shows the full command; the suite appends ARGS to each command line
    (e.g. tiny="sweep=tiny": 2 sizes x 2 replications instead of the paper's 20 x 40);
  - needs="slurm" | "gpu" | "R": runs only where a SLURM cluster answers, CUDA is available, or R
    loads flexmix; elsewhere the block is skipped and the page's test ends skipped with the reason
    (after every other block of the page has run and passed);
  - ci: the block is .ci/run's test command: it is not run here (it would run this suite inside
    itself); each of its commands must be one of .ci/run's.
  Leading `pip install ...` steps of a bash block are never run (they would change the environment
  the suite runs in): the torch pin must be .ci/run's and every extra named must exist in
  pyproject.toml.
- ```text right after a run block (python run or bash; prose may stand between, no other block):
  the output the docs show, compared with what that block printed. Line by line and token by
  token (split on white space); a line `...` stands for any number of lines, a token `...` for any
  one token; numbers agree within rtol (default 1e-3) or atol (default 1e-9), which a text block's
  rtol="..." / atol="..." attributes change; other tokens must be equal. Left out with `...`:
  timings (seconds), absolute paths of written files (they name the temporary folder) and, where
  they are shown, iteration counts that Anderson's acceleration may move by one or two on another
  machine (float rounding); nothing else.
- ```console: illustration only (a message, a tree, the output of a command not run); never run
  and never compared.

Any other block (another language, a python block that is neither written nor run, a yaml block
that is not written, a ```text block with no run block before it) fails the page: nothing shown
goes untested. The pages must also point only at what a clone has: relative links exist (on the
built site, for docs/ pages: the results pages come from experiments/<study>/README.md through
docs/hooks/studies.py), repository paths in backticks exist and are tracked, nothing points outside
the repository, and no tracked file is git-ignored.
"""

import contextlib
import importlib.util
import io
import math
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
ILLUSTRATION = {"console"}
COMMAND_WORDS = ("python ", "pip ", "bash ", "sudo ", "mkdocs ", "tensorboard ")


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------- parsing


def parse_info(info: str) -> dict:
    """`run tiny="sweep=tiny" file=x.py` -> {'run': True, 'tiny': 'sweep=tiny', 'file': 'x.py'}."""
    attrs = {}
    for word in shlex.split(info):
        key, eq, value = word.partition("=")
        attrs[key] = value if eq else True
    return attrs


def blocks(page: Path) -> list:
    """[(lang, attrs, code, line)] for every fenced block of the page, in order."""
    text = page.read_text()
    return [
        (m.group(1), parse_info(m.group(2)), m.group(3), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
    ]


def kind(lang: str, attrs: dict) -> str:
    """What the harness does with a block: file, python, bash, ci, output, illustration; else 'untested'."""
    if "file" in attrs and lang in ("python", "yaml"):
        return "file"
    if lang == "python" and attrs.get("run"):
        return "python"
    if lang == "bash":
        return "ci" if attrs.get("ci") else "bash"
    if lang == "text":
        return "output"
    if lang in ILLUSTRATION:
        return "illustration"
    return "untested"


def plan(page: Path) -> list:
    """[(kind, attrs, code, line, expected output or None)]; a text block is attached to the run block before it."""
    steps = []
    for lang, attrs, code, line in blocks(page):
        k = kind(lang, attrs)
        assert k != "untested", (
            f"{rel(page)}:{line}: ```{lang} block that is neither written, run nor marked ```console"
        )
        if k == "output":
            assert steps and steps[-1][0] in ("python", "bash") and steps[-1][4] is None, (
                f"{rel(page)}:{line}: a ```text block compares output: it must follow a run block "
                "(use ```console for illustration)"
            )
            steps[-1] = (*steps[-1][:4], (code, attrs, line))
        else:
            steps.append((k, attrs, code, line, None))
    return steps


# ---------------------------------------------------------------------------------- output comparison

NUMBER = re.compile(r"([^\d+-]*?)([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)([^\d]*)")


def _tokens_match(want: str, got: str, rtol: float, atol: float) -> bool:
    """Equal tokens, or numbers within the tolerance with the same text around them (`[0.93,`)."""
    if want == "..." or want == got:
        return True
    a, b = NUMBER.fullmatch(want), NUMBER.fullmatch(got)
    if not a or not b or a.group(1) != b.group(1) or a.group(3) != b.group(3):
        return False
    return math.isclose(float(a.group(2)), float(b.group(2)), rel_tol=rtol, abs_tol=atol)


def _line_match(want: str, got: str, rtol: float, atol: float) -> bool:
    w, g = want.split(), got.split()
    return len(w) == len(g) and all(_tokens_match(a, b, rtol, atol) for a, b in zip(w, g))


def output_matches(expected: str, printed: str, rtol: float = 1e-3, atol: float = 1e-9) -> bool:
    """Whether `printed` is what `expected` shows (see the module docstring); blank lines are ignored."""
    want = [line.rstrip() for line in expected.splitlines() if line.strip()]
    got = [line.rstrip() for line in printed.splitlines() if line.strip()]

    @lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and _line_match(want[i], got[j], rtol, atol) and match(i + 1, j + 1)

    return match(0, 0)


def test_output_comparison():
    shown = (
        "fit (em), n = 5000\nparameter  estimate\n...\ngate.tau  1.00118 [0.93, 1.07]\n"
        "status: converged after ... iterations\n"
    )
    printed = (
        "fit (em), n = 5000\nparameter  estimate\nnu 0.001\neta -0.99\ngate.tau  1.001181 [0.930, 1.0700]\n"
        "status: converged after 22 iterations\n"
    )
    assert output_matches(shown, printed)
    assert not output_matches(shown, printed.replace("1.001181", "1.01"))
    assert not output_matches(shown, printed.replace("em", "newton"))
    assert not output_matches(shown, printed + "one more line\n")


# -------------------------------------------------------------------------------------------- running


@lru_cache(maxsize=None)
def ci_script() -> str:
    return (ROOT / ".ci" / "run").read_text()


def ci_commands() -> set:
    """.ci/run's command lines, `python -m pip` as `pip` and pip's quiet flags left out."""
    out = set()
    for line in ci_script().splitlines():
        line = line.strip().replace("python -m pip", "pip")
        line = line.replace(" --quiet", "").replace(" --disable-pip-version-check", "")
        try:
            out.add(" ".join(shlex.split(line)) if line and not line.startswith("#") else "")
        except ValueError:  # a line continued by a backslash: not a command of its own
            pass
    return out


def check_pip_step(step: str, where: str):
    """A `pip install` step of a shown command: .ci/run's torch pin, extras that pyproject.toml has."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for word in shlex.split(step)[2:]:
        if word.startswith("torch=="):
            assert f'"{word}"' in ci_script() or f" {word}" in ci_script(), (
                f"{where}: {word} is not .ci/run's torch pin"
            )
        elif word.startswith("."):
            names = re.findall(r"\[(.*)\]", word)
            for name in names[0].split(",") if names else []:
                assert name in extras, f"{where}: pyproject.toml has no extra {name!r}"


def split_pip(code: str, where: str) -> str:
    """The block with its leading `pip install ... &&` steps checked and removed."""
    lines = []
    for line in code.splitlines():
        parts = line.split(" && ")
        while parts and parts[0].strip().startswith("pip install "):
            check_pip_step(parts.pop(0).strip(), where)
        lines.append(" && ".join(parts))
    return "\n".join(lines)


def with_tiny(code: str, tiny: str) -> str:
    """Append the tiny overrides to each command line (a line not continued by a backslash, not a comment)."""
    lines = code.rstrip("\n").splitlines()
    cont = False
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith("\\"):
            lines[i] = f"{line.rstrip()} {tiny}"
        cont = line.rstrip().endswith("\\")
    assert not cont
    return "\n".join(lines) + "\n"


def _slurm() -> str | None:
    if not shutil.which("sbatch") or not shutil.which("sacct"):
        return "needs a SLURM cluster (no sbatch/sacct here)"
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "slurm" / "local_cluster.sh"), "status"], capture_output=True
    )
    return None if proc.returncode == 0 else "needs a SLURM cluster (none answers here)"


def _gpu() -> str | None:
    return None if torch.cuda.is_available() else "needs a CUDA GPU (none here)"


def _r() -> str | None:
    if not shutil.which("Rscript"):
        return "needs R with flexmix (no Rscript here)"
    proc = subprocess.run(["Rscript", "-e", "suppressMessages(library(flexmix))"], capture_output=True)
    return None if proc.returncode == 0 else "needs R with flexmix (not installed here)"


NEEDS = {"slurm": _slurm, "gpu": _gpu, "R": _r}


def seed_folder(tmp: Path):
    """The repository's experiment scripts (not their results), so that `bash experiments/...` runs in tmp."""
    tracked = subprocess.run(
        ["git", "ls-files", "experiments"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in tracked:
        if name.endswith((".py", ".sh", ".R")) and (ROOT / name).is_file():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp / name)


def run_python(code: str, tmp: Path, name: str, namespace: dict) -> str:
    """Run a block in the page's namespace (the blocks of a page share one session, as in a notebook)."""
    script = tmp / f"{name}.py"
    script.write_text(code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        namespace.update(runpy.run_path(str(script), init_globals=namespace, run_name="__main__"))
    script.unlink()
    return out.getvalue()


def run_bash(code: str, tmp: Path, where: str) -> str:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "0",
        "MPLBACKEND": "Agg",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{where} failed (exit {proc.returncode}):\n{code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def run_page(page: Path, tmp: Path) -> dict:
    """Run the page's blocks in order in tmp; returns counts {blocks, run, checked, compared, skipped: [reasons]}."""
    seed_folder(tmp)
    counts = {"blocks": 0, "run": 0, "checked": 0, "compared": 0, "skipped": []}
    namespace = {}
    for i, (k, attrs, code, line, expected) in enumerate(plan(page)):
        where = f"{rel(page)}:{line}"
        counts["blocks"] += 1 + (expected is not None)
        if k == "illustration":
            continue
        if k == "file":
            target = tmp / attrs["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
            counts["run"] += 1
            continue
        if k == "ci":
            for cmd in code.strip().split(" && "):
                if cmd.startswith("pip install "):
                    check_pip_step(cmd, where)
                assert " ".join(shlex.split(cmd)) in ci_commands(), f"{where}: {cmd!r} is not a command of .ci/run"
            counts["checked"] += 1  # .ci/run's test command: checked against .ci/run, not run inside the suite
            continue
        if k == "bash":
            need = attrs.get("needs")
            if need:
                why = NEEDS[need]()
                if why:
                    counts["skipped"].append(f"{where}: {why}")
                    continue
            code = split_pip(code, where)
            if attrs.get("tiny"):
                code = with_tiny(code, attrs["tiny"])
            printed = run_bash(code, tmp, where)
        else:
            printed = run_python(code, tmp, f"_block_{i}", namespace)
        counts["run"] += 1
        if expected is not None:
            shown, oattrs, oline = expected
            ok = output_matches(shown, printed, float(oattrs.get("rtol", 1e-3)), float(oattrs.get("atol", 1e-9)))
            assert ok, f"{rel(page)}:{oline}: the output shown is not what the block at line {line} printed:\n{printed}"
            counts["compared"] += 1
    return counts


@pytest.fixture
def page_folder(tmp_path, monkeypatch):
    """A fresh folder as working directory and on sys.path; one torch thread; torch's default dtype as a
    user's session has it (float32; other test modules set float64); modules imported from it forgotten after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    before = set(sys.modules)
    yield tmp_path
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    for name in set(sys.modules) - before:
        f = getattr(sys.modules[name], "__file__", None) or ""
        if f.startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_page_runs(page, page_folder):
    counts = run_page(page, page_folder)
    print(
        f"{rel(page)}: {counts['blocks']} blocks, {counts['run']} run, {counts['compared']} outputs compared, "
        f"{len(counts['skipped'])} skipped"
    )
    if counts["skipped"]:
        pytest.skip(
            f"{rel(page)}: the other {counts['run']} blocks ran and passed; skipped: " + "; ".join(counts["skipped"])
        )


# ------------------------------------------------------------------------------------ what pages point at


def _fences_removed(text: str) -> str:
    return FENCE.sub("", text)


def linked_paths(text: str) -> set:
    """Targets of Markdown links and images that are not URLs or anchors (the anchor cut off)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", _fences_removed(text))
    return {t.split("#")[0] for t in targets if not t.startswith(("http://", "https://", "mailto:", "#"))}


def backticked_paths(text: str) -> set:
    """`a/b/c` spans whose first part is a top-level entry of the repository (no placeholders)."""
    spans = re.findall(r"`([A-Za-z0-9_.][A-Za-z0-9_./-]*)`", _fences_removed(text))
    top = {t.split("/")[0] for t in tracked()}  # the repository's own entries: not a build output like site/
    return {s for s in spans if "/" in s and s.split("/")[0] in top}


def study_files() -> dict:
    """{path under docs/: source in the repository} of the pages that docs/hooks/studies.py generates."""
    spec = importlib.util.spec_from_file_location("docs_hooks_studies", DOCS / "hooks" / "studies.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks.generated_files(ROOT)


@lru_cache(maxsize=None)
def tracked() -> tuple:
    return tuple(
        subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    )


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_page_links(page):
    text = page.read_text()
    missing = []
    for target in linked_paths(text):
        if page.parent == ROOT:  # the README: repository files
            assert "../" not in target, f"{rel(page)}: {target} points outside the repository"
            ok = (ROOT / target).exists()
        else:  # a docs page: the built site's files
            resolved = os.path.normpath(page.parent.relative_to(DOCS) / target)
            assert not resolved.startswith(".."), f"{rel(page)}: {target} points outside docs/"
            ok = (DOCS / resolved).exists() or resolved in study_files()
        if not ok:
            missing.append(target)
    assert not missing, f"{rel(page)}: links to missing files {missing}"
    paths = backticked_paths(text)
    untracked = [
        p for p in paths if not any(t == p.rstrip("/") or t.startswith(p.rstrip("/") + "/") for t in tracked())
    ]
    assert not untracked, f"{rel(page)}: repository paths that a clone lacks {untracked}"
    assert not re.search(r"(?<![\w.])/(?:home|work|tmp|root|Users)/", text), (
        f"{rel(page)}: an absolute path of one machine"
    )
    for line in _fences_removed(text).splitlines():
        if line.startswith("    ") and line.strip().startswith(COMMAND_WORDS) and not line.lstrip().startswith("- "):
            pytest.fail(f"{rel(page)}: a command in an indented block, which no test runs: {line.strip()!r}")


def test_readme_commands_are_ci_commands():
    """The README's fresh-machine test command is the one .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    ci = [code for lang, attrs, code, _ in blocks(ROOT / "README.md") if lang == "bash" and attrs.get("ci")]
    assert ci and "python -m pytest -q" in ci[0] and "python -m pytest -q" in ci_commands()
    assert "python -m softmoe_torch.run setting=distinguishable" in readme


def test_no_tracked_file_is_ignored():
    proc = subprocess.run(
        ["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout == ""


def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict` passes (where the docs extra is installed)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
