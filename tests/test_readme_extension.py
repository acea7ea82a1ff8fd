"""Follow the extension guide verbatim: its fenced blocks run in order in an empty folder.

Info strings: ```python file=PATH / ```yaml file=PATH write a file; ```python run executes the
code (in this process, with the folder as working directory and on sys.path); ```bash runs in
bash -e. Other blocks are illustration only."""
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "README.md"  # the extension guide lives in the README

FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.S | re.M)


def guide_blocks(path=GUIDE):
    """[(kind, target, code)] with kind 'file' (target: path), 'python' or 'bash'."""
    blocks = []
    for lang, info, code in FENCE.findall(path.read_text()):
        attrs = dict(a.split("=", 1) for a in info.split() if "=" in a)
        if "file" in attrs:
            blocks.append(("file", attrs["file"], code))
        elif lang == "python" and "run" in info.split():
            blocks.append(("python", None, code))
        elif lang == "bash":
            blocks.append(("bash", None, code))
    return blocks


def test_guide_has_every_kind_of_block():
    kinds = {k for k, _, _ in guide_blocks()}
    assert kinds == {"file", "python", "bash"}


def test_guide_runs_verbatim(tmp_path, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, (kind, target, code) in enumerate(guide_blocks()):
            if kind == "file":
                (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / target).write_text(code)
            elif kind == "python":
                script = tmp_path / f"block_{i}.py"
                script.write_text(code)
                runpy.run_path(str(script), run_name="__main__")
            else:
                proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
                assert proc.returncode == 0, f"block {i} failed:\n{code}\n{proc.stdout}\n{proc.stderr}"
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("my_experts", None)
    for name in ("mlp.json", "frozen.json", "task_a.pt"):
        assert (tmp_path / name).is_file(), name
    assert list(tmp_path.glob("outputs/frozen_mlp/*/report.md"))


def test_every_code_block_is_tested():
    """Every python/yaml block is written or run (bash always runs): nothing goes untested."""
    for lang, info, _ in FENCE.findall(GUIDE.read_text()):
        if lang in ("python", "yaml"):
            assert "file=" in info or "run" in info.split(), f"untested ```{lang}{info} block"
