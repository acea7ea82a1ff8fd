"""End-to-end tests of experiments/benchmarks/benchmark.py: the --quick table, a tiny --scale run and a tiny
--protocol run (about a minute together on a busy 2-core machine)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_METHODS = ("em", "em_newton", "em_torch", "direct", "newton")
PEERS = ("baseline", "scipy_bfgs", "numpy_newton")


def _bench(*flags, out):
    """Run the benchmark with one thread per stack (fair and fast on a busy machine); its JSON and stdout."""
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "benchmarks" / "benchmark.py"),
        *flags,
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_table(tmp_path):
    report, stdout = _bench("--quick", out=tmp_path / "b.json")
    section = report["table"]
    rows = section["rows"]
    assert {(r["method"], r["mode"]) for r in rows} == {
        (m, mode) for m in TORCH_METHODS + PEERS for mode in ("single", "batch")
    }
    assert {r["n"] for r in rows} == {1000, 3000}
    assert section["machine"]["torch"] and section["machine"]["cpu_count"] >= 1
    assert len(section["load_before"]) == len(section["load_after"]) == 3
    assert {e["method"] for e in section["cost_exponents"]} == set(TORCH_METHODS + PEERS)
    for r in rows:
        if r["seconds"] is None:  # only em_torch's batch run may be skipped, and it says why
            assert r["method"] == "em_torch" and r["mode"] == "batch" and r["note"].startswith("skipped")
            continue
        assert r["seconds"] > 0 and r["seconds_per_fit"] > 0 and r["peak_mib"] > 0, r
        assert r["evaluations"] > 0 and r["iterations"] > 0, r
        assert r["fits"] == (4 if r["mode"] == "batch" and r["kind"] == "torch" else 1), r
        assert sum(r["statuses"].values()) == r["fits"], r
        for key in ("speedup_baseline", "speedup_peer"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["strongest_peer"] in ("scipy_bfgs", "numpy_newton")
        # an easy setting: every method and peer reaches the best log-likelihood found on each replication
        assert 0 <= r["gap"] < 1e-6, r
        if r["kind"] == "torch":
            # both sides evaluate the same log-likelihood (up to ~1e-9: the frozen nu0 is float32-rounded)
            assert r["objective_gap"] < 1e-8, r
    assert all("extrapolated" in r["note"] for r in rows if r["kind"] == "peer" and r["mode"] == "batch")
    assert "x base" in stdout and "cost exponents" in stdout and "load average" in stdout


def test_tiny_scale(tmp_path):
    figure = tmp_path / "scaling.png"
    report, stdout = _bench(
        "--scale", "--scale-sizes", "1000", "3000", "--figure", str(figure), out=tmp_path / "b.json"
    )
    section = report["scale"]
    assert {(r["method"], r["n"]) for r in section["rows"]} == {(m, n) for m in ("newton", "em") for n in (1000, 3000)}
    assert all(r["seconds"] > 0 and r["peak_mib"] > 0 and r["status"] == "converged" for r in section["rows"])
    assert all(math.isfinite(e["exponent"]) and e["sizes"] == [1000, 3000] for e in section["exponents"].values())
    assert figure.read_bytes().startswith(b"\x89PNG") and section["figure"] == str(figure)
    assert "cost-vs-n exponent" in stdout


def test_tiny_protocol(tmp_path):
    out = tmp_path / "b.json"
    out.write_text(json.dumps({"table": {"rows": []}}))  # another mode's section is kept
    report, stdout = _bench(
        "--protocol", "--protocol-sweep", "tiny", "--settings", "distinguishable", "--protocol-fits", "newton", out=out
    )
    assert report["table"] == {"rows": []}
    (row,) = report["protocol"]["rows"]
    assert (row["setting"], row["fit"], row["sweep"]) == ("distinguishable", "newton", "tiny")
    assert row["wall_seconds"] > row["fit_seconds"] > 0 and row["peak_mib"] > 0
    assert row["fits"] == 4 and row["max_iter"] == 0 and row["statuses"] == {"converged": 4}  # tiny: 2 sizes x 2 reps
    assert "softmoe_torch.run setting=distinguishable fit=newton" in row["command"]
    assert "max_iter" in stdout


def test_tiny_mixture_evaluation(tmp_path):
    """The K >= 2 evaluation benchmark end to end, eagerly on a tiny size: every order timed and written."""
    out = tmp_path / "m.json"
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "benchmarks" / "mixture_evaluation.py"),
        *("--components", "3", "--sizes", "300", "--rounds", "2", "--modes", "eager", "--out", str(out)),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert (row["K"], row["n"]) == (3, 300)
    assert set(row["ms"]["eager"]) == {"value", "gradient", "hessian", "hessian_alone"}
    assert all(v > 0 for v in row["ms"]["eager"].values())
    assert len(report["load_average"]) == 2
