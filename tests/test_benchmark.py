"""End-to-end test of experiments/benchmark.py in its --quick form."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("baseline", "em", "em_batched", "direct")


def test_quick_benchmark(tmp_path):
    out = tmp_path / "b.json"
    # one thread per stack: the comparison stays fair and the test fast on a busy machine
    cmd = [sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {(r["method"], r["mode"]) for r in rows} == {(m, mode) for m in METHODS for mode in ("single", "batch")}
    assert {r["n"] for r in rows} == {1000, 3000}
    assert report["machine"]["torch"] and report["machine"]["cpu_count"] >= 1
    assert {e["method"] for e in report["cost_exponents"]} == set(METHODS)
    for r in rows:
        if r["seconds"] is None:  # only em's batch run may be skipped, and it says why
            assert r["method"] == "em" and r["mode"] == "batch" and r["note"].startswith("skipped")
            continue
        assert r["seconds"] > 0 and math.isfinite(r["speedup"]) and r["speedup"] > 0, r
        assert r["peak_mib"] > 0
        if r["method"] != "baseline":
            # both sides evaluate the same log-likelihood (up to ~1e-9: the frozen nu0 is float32-rounded)
            assert r["objective_gap"] < 1e-8, r
            assert r["min_delta_loglik"] >= -1e-6, r  # torch reaches the baseline's optimum or better
    assert "extrapolated" in next(r for r in rows if r["method"] == "baseline" and r["mode"] == "batch")["note"]
    assert "speedup" in proc.stdout and "cost exponents" in proc.stdout
