"""Live monitoring: TensorBoard events per finished sample size while the sweep runs, one stream
that a resume continues; the work-weighted progress bar; typed rows read back from results.csv."""

import math
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from softmoe_torch.errors import Interrupted
from softmoe_torch.run import run_experiment
from softmoe_torch.settings.setting import Setting, load_setting
from softmoe_torch.study import sweep
from softmoe_torch.study.monitor import Monitor
from softmoe_torch.study.progress import WorkBar, per_fit_seconds
from softmoe_torch.study.store import Results, columns

SWEEP = ["fit=direct", "progress=false", "sweep.reps=2", "sweep.sizes=[300,400,500,600,700]"]


def tags(log_dir):
    acc = EventAccumulator(str(log_dir)).Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags()["images"]), acc


def test_tensorboard_is_written_as_the_run_goes_and_resumed_once(tmp_path, compose_cfg, monkeypatch, one_thread):
    cfg, out = compose_cfg(SWEEP), tmp_path / "run"
    real, calls = sweep._fit_batch, []

    def stop_at_the_fifth(*args):
        calls.append(args[2])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sweep, "_fit_batch", stop_at_the_fifth)
    with pytest.raises(Interrupted, match="kept 8 finished fits"):
        run_experiment(cfg, out)
    scalars, images, acc = tags(out / "tensorboard")
    assert {
        "error/beta",
        "error_median/nu",
        "error_q10/eta",
        "error_q90/exp_tau",
        "batch/seconds",
        "batch/iterations_mean",
        "slope/beta",
        "slope_ci/nu_high",
    } <= scalars and not images
    assert [e.step for e in acc.Scalars("error/beta")] == [300, 400, 500, 600]
    assert [e.step for e in acc.Scalars("slope/eta")] == [500, 600]  # once three sizes are done

    monkeypatch.setattr(sweep, "_fit_batch", real)
    run_experiment(cfg, out)  # the resume fits n=700 only and continues the same curves
    scalars, images, acc = tags(out / "tensorboard")
    assert [e.step for e in acc.Scalars("error/beta")] == [300, 400, 500, 600, 700] and "figure" in images
    files = sorted((out / "tensorboard").iterdir())
    run_experiment(cfg, out)  # nothing left to fit: no new events
    assert sorted((out / "tensorboard").iterdir()) == files
    report = (out / "report.md").read_text()
    assert "all 3 runs into this directory" in report


def test_slopes_are_logged_over_the_sizes_up_to_n_when_sizes_finish_out_of_order(tmp_path, compose_cfg, one_thread):
    """Worker processes may finish sample sizes out of order: the slope at step n uses the sizes up
    to n that are complete, once there are three."""
    cfg = compose_cfg([*SWEEP, "monitor.tensorboard=false"])
    rows = sweep.run_study(cfg, tmp_path / "run").rows
    monitor, done = Monitor(tmp_path / "tb"), []
    for n in (300, 500, 400, 700, 600):
        done += [r for r in rows if r["n"] == n]
        monitor.log_progress(n, done, load_setting(cfg.setting), int(cfg.seed))
    monitor.close()
    _, _, acc = tags(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("error/beta")] == [300, 500, 400, 700, 600]
    assert [e.step for e in acc.Scalars("slope/eta")] == [700, 600]


def test_sizes_are_cut_for_the_workers_along_fit_batch_groups():
    reps = list(range(40))
    parts = sweep.split_for_workers([(1000, reps), (20_000, reps), (100_000, reps[3:])], 2)
    assert parts[0] == (1000, reps)  # one group (40 x 1000 samples): not cut
    assert parts[1:3] == [(20_000, reps[:20]), (20_000, reps[20:])]  # groups of 5 replications
    assert parts[3:] == [(100_000, reps[3:21]), (100_000, reps[21:])]  # one replication a group
    assert sweep.split_for_workers([(20_000, reps)], 3) == [
        (20_000, reps[:15]),
        (20_000, reps[15:25]),
        (20_000, reps[25:]),
    ]


def test_sizes_are_cut_along_the_groups_of_the_plans_fit_path():
    """A compiled mixture sweep's parts follow its own (larger) groups: a size whose 40 replications
    are one group stays whole; the paper's sweep is cut as above."""
    from types import SimpleNamespace

    from softmoe_torch import AffineExpert, Component, Gaussian, MixtureOfExperts, SoftmaxGate
    from softmoe_torch.estimation.driver import FitOptions

    reps = list(range(40))
    moe = MixtureOfExperts([Component(AffineExpert(1), Gaussian()) for _ in range(2)], SoftmaxGate(1))
    plan = lambda compile: SimpleNamespace(model=moe, opts=FitOptions.for_method("newton", compile=compile), workers=2)  # noqa: E731
    todo = [(20_000, reps), (100_000, reps)]
    assert sweep.batch_plan(plan(True), todo) == (2, [(20_000, reps), (100_000, reps[:20]), (100_000, reps[20:])])
    assert sweep.batch_plan(plan(False), todo)[1][:2] == [(20_000, reps[:20]), (20_000, reps[20:])]


@pytest.mark.parametrize("index,singles_first", [(0, False), (1, True), (2, False)])
def test_workers_make_their_compiled_graphs_in_turns(compose_cfg, monkeypatch, index, singles_first):
    """A worker makes the fit's compiled graphs before its first batch, the odd ones starting with a
    batch of one problem, on a few simulated samples of the sweep's setting."""
    from softmoe_torch.study import workers

    calls = []
    monkeypatch.setattr(
        sweep, "precompile", lambda model, data, opts, singles_first: calls.append((data, singles_first))
    )
    monkeypatch.setattr(sweep, "keep_freed_memory", lambda: True)
    monkeypatch.setattr(sweep, "_WORKER", {})
    monkeypatch.setitem(workers._INDEX, "index", index)
    sweep._worker_init(compose_cfg(["setting=softmax_gaussian_moe", "fit=newton", "fit.compile=true"]))
    [(data, first)] = calls
    X, _ = data()
    assert (
        X.shape[:2] == (2, sweep.PRECOMPILE_SAMPLES) and first is singles_first and sweep._WORKER["plan"].opts.compile
    )


def test_a_batch_holds_at_most_batch_samples_even_in_one_process():
    reps = list(range(40))
    n = sweep.BATCH_SAMPLES // 4  # one replication a group; 40 replications are 10 batches' worth
    parts = sweep.split_for_workers([(n, reps), (1000, reps)], 1)
    assert [len(r) for _, r in parts[:-1]] == [4] * 10 and [r for _, part in parts[:-1] for r in part] == reps
    assert parts[-1] == (1000, reps)
    assert [len(r) for _, r in sweep.split_for_workers([(n, reps)], 2)] == [4] * 10


def test_rows_read_back_are_typed_like_new_rows(tmp_path):
    row = {
        "setting": "s",
        "n": 1000,
        "rep": 3,
        "seed": 0,
        "err_beta": 0.1,
        "err_exp_tau": 0.2,
        "err_eta": 0.3,
        "err_nu": 1e-5,
        "mean_loglik": 1.25,
        "loglik_truth": 1.2,
        "moved": 0.3,
        "hellinger": 0.01,
        "n_iter": 17,
        "converged": False,
        "status": "max_iter",
        "at_bound": "gate.tau",
        "seconds": 0.5,
    }
    Results(tmp_path / "results.csv", [], columns(Setting)).add([row])
    assert Results.load(tmp_path / "results.csv", columns(Setting)).rows == [row]


def test_per_fit_cost_follows_a_power_law_in_n():
    history = [(n, 10, 10 * 3e-5 * n**0.8) for n in (1000, 2000, 4000, 8000)]
    assert per_fit_seconds(history, 100_000) == pytest.approx(3e-5 * 100_000**0.8)
    assert per_fit_seconds(history[:1], 2000) == pytest.approx(2 * 3e-5 * 1000**0.8)  # one size: linear


def test_bar_counts_work_moves_within_a_batch_and_shows_integer_n():
    bar = WorkBar([(1000, 2), (100_000, 2)], "test", tick=0.02)
    bar(1000, [0, 1], None)
    bar(1000, [0, 1], 0.2)
    assert bar.bar.total == 202_000 and bar.bar.n == 2000
    bar(100_000, [0, 1], None)
    time.sleep(0.3)
    assert 2000 < bar.bar.n < 202_000  # moved by elapsed time over the predicted 20 s
    assert "n=100000," in bar.bar.postfix
    assert math.isclose(bar.eta(), 20.0, abs_tol=1.0)
    bar.close()


def test_bar_with_two_workers_shows_both_batches_and_lays_the_eta_out_on_them():
    """The ETA is the end of the batches left, each started as a worker frees up: three equal
    batches on two workers take two batch times, not one and a half."""
    three = WorkBar([(1000, 2), (5000, 2), (5000, 2), (5000, 2)], "test", disable=True, workers=2)
    three(1000, [0, 1], None)
    three(1000, [0, 1], 0.2)
    assert math.isclose(three.eta(), 2 * per_fit_seconds(three.history, 5000) * 2, rel_tol=1e-9)
    three.close()
    bar = WorkBar([(1000, 2), (2000, 2), (100_000, 2), (100_000 - 1, 2)], "test", tick=0.02, workers=2)
    bar(1000, [0, 1], None)
    bar(2000, [0, 1], None)
    bar(2000, [0, 1], 0.4)  # out of order: the later batch ends first
    bar(1000, [0, 1], 0.2)
    assert bar.bar.n == 6000 and not bar.running
    bar(100_000, [0, 1], None)
    bar(100_000 - 1, [0, 1], None)
    assert "n=100000, n=99999," in bar.bar.postfix
    each = [per_fit_seconds(bar.history, n) * 2 for n in (100_000, 100_000 - 1)]
    assert math.isclose(bar.eta(), max(each), rel_tol=0.05)  # the two run side by side
    bar.close()
