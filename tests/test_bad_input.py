"""One table of bad inputs to `run`, `fit` and `bootstrap_test`: each gives one line naming the problem and the fix
('error: ...', exit 2; 'interrupted: ...', exit 130 for Ctrl-C), no traceback, and leaves every
file already written as it was. Cases run in-process what the commands run (the output-path
check, Hydra's composition, the entry function); two run the real commands in a subprocess."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import CONF, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from softmoe_torch import bootstrap_test as test_cli
from softmoe_torch import cli
from softmoe_torch import fit as fit_cli
from softmoe_torch import run as run_cli_module
from softmoe_torch.lrt import contamination_test, prompts_test, with_variance_floor
from softmoe_torch.study import sweep

TINY = ["sweep=tiny", "fit=direct", "progress=false"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny sweep (sizes 500, 1000 x 2 reps): results.csv, fingerprint.json, ..."""
    out = tmp_path_factory.mktemp("base") / "run"
    proc = run_cli("softmoe_torch.run", *TINY, "monitor.tensorboard=false", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    return out


def write_csv(path, text):
    path.write_text(text)
    return path


def npz_bytes(**arrays):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def make_files(d):
    """Bad data files (and one good one) in folder d; returns {name: path}."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 8)), rng.standard_normal(40)
    header = ",".join([f"x{i}" for i in range(1, 9)] + ["y"])
    good_row = ",".join(["0.1"] * 9)
    files = {
        "good.npz": npz_bytes(X=X, y=y),
        "empty.npz": b"",
        "text.npz": b"x1,y\n1,2\n",
        "truncated.npz": npz_bytes(X=X, y=y)[:300],
        "objects.npz": npz_bytes(X=np.array([object()] * 3, dtype=object), y=y[:3]),
        "noy.npz": npz_bytes(X=X),
        "nan.npz": npz_bytes(X=np.where(X > 2, np.nan, X), y=y),
        "shape.npz": npz_bytes(X=X, y=y[:-1]),
        "ragged.csv": f"{header}\n{good_row}\n0.1,0.2\n".encode(),
        "word.csv": f"{header}\n{good_row.replace('0.1', 'abc', 1)}\n".encode(),
        "header.csv": b"a,b\n1,2\n",
        "blank.csv": b"",
        "data.txt": b"1 2 3\n",
    }
    for name, content in files.items():
        (d / name).write_bytes(content)
    (d / "a_file").write_text("not a folder")
    (d / "a_dir").mkdir()
    return {name: d / name for name in [*files, "a_file", "a_dir"]}


def damage(run_dir, name, text):
    (run_dir / name).write_text(text)


RUN_CASES = {  # id: (overrides, setup(run_dir, files) or None, message)
    "tol not a number": (["fit.tol=abc"], None, "fit.tol must be a number, got 'abc'"),
    "max_iter not integer": (["fit.max_iter=2.5"], None, "fit.max_iter must be an integer"),
    "inner ftol text": (["++fit.inner.ftol=tiny"], None, "fit.inner.ftol must be a number"),
    "bound text": (["fit.bounds.real=big"], None, "fit.bounds.real must be a number"),
    "bound unknown": (["++fit.bounds.gamma=3"], None, "gamma"),
    "unknown fit key": (["++fit.speed=3"], None, "bad fit options"),
    "unknown method": (["fit.method=adam"], None, "fit.method must be one of em, direct, newton"),
    "one size": (["sweep.num_sizes=1"], None, "set sweep.num_sizes=2 or more"),
    "one explicit size": (["sweep.sizes=[1000]"], None, "a slope needs two"),
    "size below 2": (["sweep.sizes=[1,1000]"], None, "sweep.sizes must be at least 2"),
    "n_min above n_max": (["sweep.n_min=5000", "sweep.n_max=1000"], None, "swap them"),
    "reps zero": (["sweep.reps=0"], None, "sweep.reps must be at least 1"),
    "reps text": (["sweep.reps=many"], None, "sweep.reps must be an integer"),
    "workers zero": (["workers=0"], None, "workers must be at least 1"),
    "workers text": (["workers=all"], None, "workers must be an integer"),
    "seed text": (["seed=abc"], None, "seed must be an integer"),
    "unknown device": (["device=tpu"], None, "unknown device 'tpu'"),
    "unknown dtype": (["dtype=float16"], None, "unknown dtype 'float16'; use float64 or float32"),
    "unknown init policy": (["init.policy=sobol"], None, "unknown init.policy 'sobol'"),
    "no random starts": (["init=random", "init.n_init=0"], None, "init.n_init must be at least 1"),
    "init scale text": (["init.scale=abc"], None, "init.scale must be a number"),
    "plug-in not importable": (["setting.prompt.expert._target_=nowhere.Expert"], None, "cannot build the"),
    "plug-in checkpoint missing": (["++setting.pretrained.checkpoint=missing.pt"], None, "checkpoint"),
    "run dir is a file": (["hydra.run.dir={a_file}"], None, "is a file; choose a directory path for hydra.run.dir"),
    "run dir under a file": (["hydra.run.dir={a_file}/run"], None, "is a file, not a directory"),
    "results.csv damaged": (
        [],
        lambda d: damage(d, "results.csv", (d / "results.csv").read_text().replace(",500,", ",5x0,", 1)),
        "bad n value '5x0'",
    ),
    "results.csv foreign": ([], lambda d: damage(d, "results.csv", "a,b\n1,2\n"), "has columns a,b"),
    "fingerprint cut off": ([], lambda d: damage(d, "fingerprint.json", ""), "fingerprint.json is not valid JSON"),
    "other configuration": (["init.scale=0.3"], None, "holds results of another configuration (different init)"),
    "other dtype": (["dtype=float32"], None, "holds results of another configuration (different dtype)"),
    "moe inputs unknown": (["setting=softmax_gaussian_moe", "setting.x=sobol"], None, "setting.x must be one of"),
    "moe one component": (
        ["setting=softmax_gaussian_moe", "setting.n_components=1"],
        None,
        "setting.n_components must be at least 2",
    ),
    "moe components text": (
        ["setting=softmax_gaussian_moe", "setting.n_components=many"],
        None,
        "setting.n_components must be an integer",
    ),
    "setting kind unknown": (
        ["++setting.kind=hmm"],
        None,
        "setting.kind must be one of contaminated, moe, regression, got 'hmm'",
    ),
}

FIT_CASES = {  # id: (data file name or None, extra overrides, message)
    "no data argument": (None, [], "data is required; add data=... to the command"),
    "data file missing": ("missing.npz", [], "data file not found"),
    "0-byte npz": ("empty.npz", [], "the file is empty (0 bytes); write it with numpy.savez"),
    "text named npz": ("text.npz", [], "not an .npz archive; write it with numpy.savez"),
    "truncated npz": ("truncated.npz", [], "write it with numpy.savez"),
    "object arrays": ("objects.npz", [], "holds Python objects, which are never unpickled"),
    "missing y": ("noy.npz", [], "missing array(s) y"),
    "NaN in X": ("nan.npz", [], "must be finite"),
    "shapes disagree": ("shape.npz", [], "expected X of shape (n, d) and y of shape (n,)"),
    "ragged csv row": ("ragged.csv", [], "line 3: 2 values, but the header has 9 columns; fix or remove that row"),
    "word in csv": ("word.csv", [], "not a number"),
    "bad csv header": ("header.csv", [], "expected a header x1,...,xd,y"),
    "empty csv": ("blank.csv", [], "the file is empty"),
    "unknown file type": ("data.txt", [], "unsupported file type '.txt'; use .npz or .csv"),
    "fit tol text": ("good.npz", ["fit.tol=abc"], "fit.tol must be a number"),
    "out is a directory": ("good.npz", ["out={a_dir}"], "is a directory; choose a file path for out"),
    "out under a file": ("good.npz", ["out={a_file}/r.json"], "is a file, not a directory"),
    "moe with one component": (
        "good.npz",
        ["setting=softmax_gaussian_moe", "setting.n_components=1"],
        "setting.n_components must be at least 2",
    ),
    "moe components fractional": (
        "good.npz",
        ["setting=softmax_gaussian_moe", "setting.n_components=2.5"],
        "setting.n_components must be an integer",
    ),
}

TEST_CASES = {  # the bootstrap test's face: id: (extra overrides, message); the data file is good.npz
    "kind no config offers": (["test.kind=wald"], "test.kind must be one of contamination, prompts, got 'wald'"),
    "B text": (["test.B=many"], "test.B must be an integer"),
    "seed fractional": (["test.seed=1.5"], "test.seed must be an integer"),
    "iterations text": (["test.iterations=ten"], "test.iterations must be an integer"),
    "iterations zero": (["test.iterations=0"], "test.iterations must be at least 1"),
    "floor text": (["test.variance_floor=low"], "variance floor ratio must be a number in (0, 1), got 'low'"),
    "starts no config offers": (["test.starts=null_model"], "starts must be one of policy, anchored, got 'null_model'"),
    "broad not a list": (["test.broad=10"], "test.broad must be a list of variance ratios"),
    "broad ratio text": (["test.broad=[10,wide]"], "test.broad must be a number"),
    "broad ratio below one": (["test.broad=[0.5]"], "variance ratios must be a non-empty list of numbers > 1"),
    "extra text": (["test=prompts", "test.extra=one"], "test.extra must be an integer"),
    "prompts starts no config offers": (["test=prompts", "test.starts=x"], "starts must be one of policy, anchored"),
    "split starts for two more prompts": (
        ["test=prompts", "test.extra=2", "test.starts=anchored"],
        "anchored starts split one component of the null: one more prompt",
    ),
    "a mixture of experts": (["setting=softmax_gaussian_moe"], "this command takes contaminated settings"),
    "out is a directory": (["out={a_dir}"], "is a directory; choose a file path for out"),
}


def snapshot(folder):
    """{relative path: bytes} of every file under folder but Hydra's own .hydra records."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and ".hydra" not in p.parts}


def assert_kept(before, folder):
    """Every file of ``before`` still there with the same bytes (runs.json may only grow)."""
    for rel, content in before.items():
        now = (folder / rel).read_bytes()
        if rel.name == "runs.json":
            old = json.loads(content)
            assert json.loads(now)[: len(old)] == old
        else:
            assert now == content, rel


def call(module, argv, capsys):
    """In-process `python -m module argv` -> (exit code, stdout, stderr): the path check of
    cli.entry, then the config as Hydra composes it, then the function under @hydra.main."""
    config_name = {fit_cli: "fit_data", test_cli: "test_data"}.get(module, "config")
    with pytest.raises(SystemExit) as exit_info:
        cli.check_path_overrides(argv)
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=argv, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = cfg.hydra.run.dir
        HydraConfig.instance().set_config(cfg)
        module.main.__wrapped__(cfg)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def assert_one_line(code, err, message, expected_code=2):
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("interrupted:" if expected_code == 130 else "error:")


@pytest.fixture
def workspace(tmp_path, finished_run, monkeypatch):
    """tmp_path with a copy of the finished run (run/) and the bad files (files/); cwd = tmp_path."""
    shutil.copytree(finished_run, tmp_path / "run")
    (tmp_path / "files").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path, make_files(tmp_path / "files")


@pytest.mark.parametrize("case", RUN_CASES)
def test_bad_run_input(case, workspace, monkeypatch, capsys):
    root, files = workspace
    overrides, setup, message = RUN_CASES[case]
    if setup:
        setup(root / "run")
    before = snapshot(root)
    argv = [
        *TINY,
        "monitor.tensorboard=false",
        f"hydra.run.dir={root / 'run'}",
        *(o.format(a_file=files["a_file"]) for o in overrides),
    ]
    code, _, err = call(run_cli_module, argv, capsys)
    assert_one_line(code, err, message)
    assert_kept(before, root)


@pytest.mark.parametrize("case", FIT_CASES)
def test_bad_fit_input(case, workspace, monkeypatch, capsys):
    root, files = workspace
    name, overrides, message = FIT_CASES[case]
    (root / "result.json").write_text("{}")  # an earlier result that must survive
    before = snapshot(root)
    argv = [
        f"hydra.run.dir={root / 'fit_run'}",
        f"out={root / 'result.json'}",
        "setting=distinguishable",
        *([] if name is None else [f"data={files.get(name, root / 'files' / name)}"]),
        *(o.format(a_dir=files["a_dir"], a_file=files["a_file"]) for o in overrides),
    ]
    code, _, err = call(fit_cli, argv, capsys)
    assert_one_line(code, err, message)
    assert_kept(before, root)


@pytest.mark.parametrize("case", TEST_CASES)
def test_bad_bootstrap_test_input(case, workspace, monkeypatch, capsys):
    root, files = workspace
    overrides, message = TEST_CASES[case]
    (root / "result.json").write_text("{}")
    before = snapshot(root)
    argv = [
        f"data={files['good.npz']}",
        "setting=distinguishable",
        f"out={root / 'result.json'}",
        "progress=false",
        "test.B=19",
        *(o.format(a_dir=files["a_dir"]) for o in overrides),
    ]
    code, _, err = call(test_cli, argv, capsys)
    assert_one_line(code, err, message)
    assert_kept(before, root)


def test_the_old_name_of_the_bootstrap_test_runs_it(tmp_path):
    """python -m softmoe_torch.test is kept for one release: the same command, the same checks."""
    files = make_files(tmp_path)
    proc = run_cli(
        "softmoe_torch.test",
        f"data={files['good.npz']}",
        "setting=distinguishable",
        "test.B=10",
        f"out={tmp_path / 'r.json'}",
        cwd=tmp_path,
    )
    assert_one_line(proc.returncode, proc.stderr, "B must be an integer of at least 19")


def test_ctrl_c_in_a_run_keeps_finished_fits(workspace, monkeypatch, capsys):
    root, _ = workspace
    before = snapshot(root)

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_fit_batch", interrupt)
    argv = [*TINY, "monitor.tensorboard=false", "sweep.sizes=[500,1000,2000]", f"hydra.run.dir={root / 'run'}"]
    code, _, err = call(run_cli_module, argv, capsys)
    assert_one_line(
        code, err, f"kept 4 finished fits in {root / 'run' / 'results.csv'}; run the same command again", 130
    )
    assert_kept(before, root)
    assert len(json.loads((root / "run" / "runs.json").read_text())) == 2  # the interrupted run's time counts


def test_ctrl_c_in_a_fit_writes_nothing(workspace, monkeypatch, capsys):
    root, files = workspace

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_cli.Estimator, "fit", interrupt)
    code, _, err = call(
        fit_cli,
        [
            f"data={files['good.npz']}",
            "setting=distinguishable",
            f"out={root / 'r.json'}",
            f"hydra.run.dir={root / 'h'}",
        ],
        capsys,
    )
    assert_one_line(code, err, "stopped before writing a result", 130)
    assert not (root / "r.json").exists()


@pytest.mark.parametrize(
    "module,args",
    [
        ("softmoe_torch.run", [*TINY, "hydra.run.dir={a_file}/run"]),
        ("softmoe_torch.fit", ["data={good}", "setting=distinguishable", "out={a_file}/r.json"]),
    ],
)
def test_real_commands_check_output_paths_first(tmp_path, module, args):
    files = make_files(tmp_path)
    proc = run_cli(module, *(a.format(a_file=files["a_file"], good=files["good.npz"]) for a in args), cwd=tmp_path)
    assert_one_line(proc.returncode, proc.stderr, "is a file, not a directory")
    assert zipfile.is_zipfile(files["good.npz"]) and files["a_file"].read_text() == "not a folder"


def test_the_table_is_large_enough():
    assert len(RUN_CASES) + len(FIT_CASES) + len(TEST_CASES) + 2 >= 50


# The same rule for the Python API: a mistake is one ValueError or IndexError whose message names
# the problem and the fix, raised before any fitting, not an error from deep inside torch.
def _model_and_data():
    import torch

    from softmoe_torch import Component, ContaminatedMoE, Gaussian, Laplace, SoftmaxGate, TanhExpert

    e1 = torch.eye(8)[0]
    model = ContaminatedMoE(
        Component(TanhExpert(8, eta=e1), Laplace(), nu=0.001, frozen=True),
        Component(TanhExpert(8, eta=-e1), Gaussian(), nu=0.001),
        SoftmaxGate(8, tau=1.0),
    )
    X = torch.randn(300, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, X, model.double().sample(X, generator=torch.Generator().manual_seed(1))


API_CASES = {  # name -> (call(Estimator, model, X, y, fitted results), error class, message)
    "X with too few columns": (
        lambda E, m, X, y, res: E(m, "newton").fit(X[:, :7], y),
        ValueError,
        "X has 7 columns but the model takes 8; pass X with the model's columns, or build the model for d = 7",
    ),
    "X with too many columns": (
        lambda E, m, X, y, res: E(m, "newton").fit(np.hstack([X, X]), y),
        ValueError,
        "X has 16 columns but the model takes 8",
    ),
    "predict on other columns": (
        lambda E, m, X, y, res: res.predict(X[:3, :5]),
        ValueError,
        "X has 5 columns but the model takes 8",
    ),
    "gate_probs on other columns": (
        lambda E, m, X, y, res: res.gate_probs(np.zeros((2, 9))),
        ValueError,
        "X has 9 columns",
    ),
    "responsibilities on other columns": (
        lambda E, m, X, y, res: res.responsibilities(X[:3, :2], y[:3]),
        ValueError,
        "X has 2 columns",
    ),
    "summary of a replication that does not exist": (
        lambda E, m, X, y, res: res.summary(5),
        IndexError,
        "replication 5 does not exist: these results hold 1 fit(s), r = 0..0",
    ),
    "se of a replication that does not exist": (
        lambda E, m, X, y, res: res.se(1),
        IndexError,
        "replication 1 does not exist",
    ),
    "a replication given as a float": (
        lambda E, m, X, y, res: res.estimates(0.0),
        IndexError,
        "replication 0.0 does not exist",
    ),
    "replication() out of range": (
        lambda E, m, X, y, res: res.replication(-2),
        IndexError,
        "replication -2 does not exist",
    ),
    "a non-numeric tolerance": (
        lambda E, m, X, y, res: E(m, "newton", tol="abc"),
        ValueError,
        "fit.tol must be a number, got 'abc'",
    ),
    "a fractional max_iter": (
        lambda E, m, X, y, res: E(m, "em", max_iter=10.5),
        ValueError,
        "fit.max_iter must be an integer",
    ),
    "an unknown option": (
        lambda E, m, X, y, res: E(m, "newton", tolerance=1e-8),
        ValueError,
        "unknown fit option(s) tolerance; the options are mstep, tol,",
    ),
    "a fractional n_init": (
        lambda E, m, X, y, res: E(m, "newton", n_init=2.5),
        ValueError,
        "n_init must be an integer of at least 1, got 2.5",
    ),
    "text for X": (
        lambda E, m, X, y, res: E(m, "newton").fit(np.array([["a"] * 8] * 3), np.zeros(3)),
        ValueError,
        "X must be numeric",
    ),
    "y of another length": (
        lambda E, m, X, y, res: E(m, "newton").fit(X, y[:10]),
        ValueError,
        "expected X (R, n, d) and y (R, n), got (1, 300, 8) and (1, 10)",
    ),
    "not a mixture": (
        lambda E, m, X, y, res: E(torch.nn.Linear(8, 1), "newton"),
        ValueError,
        "the model must be a mixture of softmoe_torch.model.mixture",
    ),
    "nothing to fit": (
        lambda E, m, X, y, res: E(_moe(frozen=True), "newton"),
        ValueError,
        "the model has no trainable parameters (every component and the gate frozen)",
    ),
    "a gate for other components": (
        lambda E, m, X, y, res: E(_moe(components=3), "newton").fit(X, y),
        ValueError,
        "the gate gives 2 weights but the mixture has 3 components",
    ),
    "a mixture of one component": (
        lambda E, m, X, y, res: _moe(components=1),
        ValueError,
        "a mixture of experts needs at least 2 components, got 1",
    ),
    "a seed as text": (
        lambda E, m, X, y, res: E(m, "newton", seed="a"),
        ValueError,
        "seed must be an integer, got 'a'",
    ),
    "a negative init_scale": (
        lambda E, m, X, y, res: E(m, "newton", init_scale=-1.0),
        ValueError,
        "init_scale must be a number of at least 0",
    ),
    "clone with an unknown setting": (
        lambda E, m, X, y, res: E(m, "newton").clone(tolerance=1e-8),
        ValueError,
        "unknown setting(s) tolerance; an estimator takes model, method",
    ),
    "clone with a bad option": (
        lambda E, m, X, y, res: E(m, "newton").clone(max_iter=2.5),
        ValueError,
        "fit.max_iter must be an integer",
    ),
    "contamination test of a model": (
        lambda E, m, X, y, res: contamination_test(m, X, y, B=19),
        ValueError,
        "estimator must be an Estimator (e.g. Estimator(model, 'newton')), got ContaminatedMoE",
    ),
    "contamination test of a general mixture": (
        lambda E, m, X, y, res: contamination_test(E(_moe(), "newton"), X, y, B=19),
        ValueError,
        "estimator's model is a MixtureOfExperts; these tests need a ContaminatedMoE",
    ),
    "variance floor of a general mixture": (
        lambda E, m, X, y, res: with_variance_floor(E(_moe(), "newton"), 0.1),
        ValueError,
        "these tests need a ContaminatedMoE",
    ),
    "a bootstrap seed as text": (
        lambda E, m, X, y, res: contamination_test(E(m, "newton"), X, y, B=19, seed="0"),
        ValueError,
        "seed must be an integer, got '0'",
    ),
    "a fractional B": (
        lambda E, m, X, y, res: contamination_test(E(m, "newton"), X, y, B=19.5),
        ValueError,
        "B must be an integer of at least 19",
    ),
    "a prompts test of equal models": (
        lambda E, m, X, y, res: prompts_test(E(m, "newton"), E(m, "newton"), X, y, B=19),
        ValueError,
        "the alternative must have more prompts than the null to be nested",
    ),
}


def _moe(components: int = 2, frozen: bool = False):
    """A general mixture of affine Gaussian experts (d = 8) under a softmax gate for 2 components."""
    from softmoe_torch import AffineExpert, Component, Gaussian, MixtureOfExperts, SoftmaxGate

    gate = SoftmaxGate(8).double().requires_grad_(not frozen)
    return MixtureOfExperts(
        [Component(AffineExpert(8).double(), Gaussian(), frozen=frozen) for _ in range(components)], gate
    )


@pytest.fixture(scope="module")
def api():
    from softmoe_torch import Estimator

    model, X, y = _model_and_data()
    return Estimator, model, X, y, Estimator(model, "newton", n_init=1).fit(X, y)


@pytest.mark.parametrize("case", API_CASES)
def test_bad_python_api_input(case, api):
    call, error, message = API_CASES[case]
    with pytest.raises(error) as info:
        call(*api)
    assert message in str(info.value) and "\n" not in str(info.value)
