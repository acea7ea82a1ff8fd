"""The fit command on user files, and its one-line errors."""

import json

import numpy as np
import pytest
from conftest import run_cli

from softmoe_torch.settings.setting import Setting
from softmoe_torch.study.simulate import simulate


@pytest.fixture
def data(compose_cfg):
    s = Setting(compose_cfg(["setting=distinguishable"]).setting)
    X, Y = simulate(s, 1500, [0], seed=3)
    return X[0].numpy(), Y[0].numpy(), s


def test_fit_npz_with_init_arrays(tmp_path, data):
    X, y, s = data
    truth = s.truth(len(y))
    path = tmp_path / "d.npz"
    np.savez(
        path,
        X=X,
        y=y,
        init_beta=truth["gate.beta"][0].numpy() + 0.05,
        init_tau=np.array(0.9),
        init_eta=truth["prompts.0.expert.eta"].numpy(),
        init_nu=np.array(0.0012),
    )
    out = tmp_path / "r.json"
    proc = run_cli("softmoe_torch.fit", f"data={path}", "setting=distinguishable", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(str(out))
    r = json.loads(out.read_text())
    assert {"beta", "tau", "eta", "nu", "mean_loglik", "n_iter", "converged", "status", "seconds"} <= set(r)
    assert r["converged"] and len(r["beta"]) == 8 and len(r["eta"]) == 8
    assert np.linalg.norm(np.array(r["eta"]) - truth["prompts.0.expert.eta"].numpy()) < 0.05


def test_fit_csv_matches_npz(tmp_path, data):
    X, y, _ = data
    X, y = X[:500], y[:500]
    np.savez(tmp_path / "d.npz", X=X, y=y)
    header = ",".join([f"x{i}" for i in range(1, 9)] + ["y"])
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.17g")
    results = []
    for name in ("d.npz", "d.csv"):
        out = tmp_path / f"{name}.json"
        proc = run_cli(
            "softmoe_torch.fit",
            f"data={tmp_path / name}",
            "setting=distinguishable",
            "fit=direct",
            "init.n_init=1",
            f"out={out}",
        )
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(out.read_text()))
    assert results[0]["mean_loglik"] == pytest.approx(results[1]["mean_loglik"], rel=1e-12)


def bad_files(tmp_path, X, y):
    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    Xn = X.copy()
    Xn[3, 2] = np.nan
    (tmp_path / "empty.csv").write_text("x1,x2,x3,x4,x5,x6,x7,x8,y\n")
    (tmp_path / "header.csv").write_text("a,b\n1,2\n")
    return {
        "missing file": (tmp_path / "nope.npz", "data file not found"),
        "missing arrays": (npz("noy.npz", X=X), "missing array(s) y"),
        "nan": (npz("nan.npz", X=Xn, y=y), "must be finite"),
        "wrong shapes": (npz("shape.npz", X=X, y=y[:-1]), "expected X of shape (n, d)"),
        "empty": (tmp_path / "empty.csv", "the data set is empty"),
        "bad header": (tmp_path / "header.csv", "expected a header x1,...,xd,y"),
        "bad init": (
            npz("init.npz", X=X, y=y, init_eta=np.ones(3)),
            "init value for prompts.0.expert.eta has 3 entries",
        ),
    }


@pytest.mark.parametrize(
    "case", ["missing file", "missing arrays", "nan", "wrong shapes", "empty", "bad header", "bad init"]
)
def test_bad_input_is_one_clear_line(tmp_path, data, case):
    X, y, _ = data
    path, message = bad_files(tmp_path, X[:50], y[:50])[case]
    proc = run_cli("softmoe_torch.fit", f"data={path}", "setting=distinguishable", f"out={tmp_path / 'r.json'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_unknown_setting_is_rejected(tmp_path, data):
    X, y, _ = data
    np.savez(tmp_path / "d.npz", X=X[:50], y=y[:50])
    proc = run_cli("softmoe_torch.fit", f"data={tmp_path / 'd.npz'}", "setting=nope")
    assert proc.returncode != 0 and "Could not find 'setting/nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_real_data_path_takes_d_from_the_data_and_writes_only_the_result(tmp_path):
    """d = 3 data, a packaged setting naming the frozen component, random starts by default,
    the summary table on the terminal, nothing written but the result."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 3))
    new = rng.random(600) < 1 / (1 + np.exp(-X.sum(1)))
    y = np.where(new, np.tanh(-X[:, 0]), np.tanh(X[:, 0])) + np.sqrt(0.001) * rng.standard_normal(600)
    np.savez(tmp_path / "d3.npz", X=X, y=y)
    proc = run_cli("softmoe_torch.fit", "data=d3.npz", "setting=nondistinguishable_eta", "fit=newton", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(d = 3): fitted from best of 5 random start(s)" in proc.stdout
    assert "gate.tau" in proc.stdout and "status: converged" in proc.stdout
    r = json.loads((tmp_path / "fit_result.json").read_text())
    assert len(r["beta"]) == 3 and np.allclose(r["eta"], [-1, 0, 0], atol=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d3.npz", "fit_result.json"]


def test_the_setting_must_be_named(tmp_path, data):
    X, y, _ = data
    np.savez(tmp_path / "d.npz", X=X[:50], y=y[:50])
    proc = run_cli("softmoe_torch.fit", f"data={tmp_path / 'd.npz'}", cwd=tmp_path)
    assert proc.returncode != 0 and "You must specify 'setting'" in proc.stderr and "distinguishable" in proc.stderr


def test_missing_data_argument_is_one_line(tmp_path):
    proc = run_cli("softmoe_torch.fit", "setting=distinguishable", f"out={tmp_path / 'r.json'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
