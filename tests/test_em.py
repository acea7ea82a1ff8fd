"""Properties of the estimator: monotone EM, frozen parts fixed, recovery, batched == single."""
import warnings

import pytest
import torch

from softmoe_torch.em import FitOptions, fit
from softmoe_torch.init import near_truth
from softmoe_torch.paper import paper_view
from softmoe_torch.settings import Setting
from softmoe_torch.simulate import simulate


def problem(compose_cfg, name, n, R, seed=0, scale=0.1):
    setting = Setting(compose_cfg([f"setting={name}"]).setting)
    X, Y = simulate(setting, n, range(R), seed)
    return setting, setting.model(), X, Y, near_truth(setting.truth(n), R, scale, seed + 1)


@pytest.mark.parametrize("mstep", ["lbfgs", "bfgs"])
def test_em_never_lowers_the_likelihood(compose_cfg, mstep):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 300, 2, scale=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # stopped early on purpose
        res = fit(model, X, Y, init, FitOptions(method="em", mstep=mstep, max_iter=6))
    for trace in res.trace:
        steps = torch.diff(torch.tensor(trace))
        assert len(trace) > 3
        assert bool((steps >= -1e-10).all()), steps.min()


def test_frozen_component_is_bit_identical_after_fit(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 500, 2)
    before = {k: v.clone() for k, v in model.pretrained.state_dict().items()}
    own = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, X, Y, init, FitOptions(method="em", mstep="bfgs", max_iter=10))
    assert not any(name.startswith("pretrained") for name in res.params)
    for k, v in model.pretrained.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in model.state_dict().items():  # fitting never writes into the model
        assert torch.equal(v, own[k])


def test_recovers_the_truth_in_the_distinguishable_setting(compose_cfg):
    setting, model, X, Y, init = problem(compose_cfg, "distinguishable", 20000, 1)
    res = fit(model, X, Y, init, FitOptions(method="em", mstep="bfgs"))
    assert res.status == ["converged"]
    est, truth = paper_view(res.params), paper_view({k: v[None] for k, v in setting.truth(20000).items()})
    assert float((est["eta"] - truth["eta"]).norm()) < 0.02
    assert float((est["beta"] - truth["beta"]).norm()) < 0.15
    assert abs(float(est["exp_tau"] - truth["exp_tau"])) < 0.4
    assert abs(float(est["nu"] / truth["nu"]) - 1) < 0.05


@pytest.mark.parametrize("method,mstep,name", [("em", "bfgs", "distinguishable"),
                                               ("direct", "bfgs", "nondistinguishable_eta"),
                                               ("em", "lbfgs", "distinguishable")])
def test_batched_fits_match_single_fits(compose_cfg, method, mstep, name):
    _, model, X, Y, init = problem(compose_cfg, name, 400, 3)
    opts = FitOptions(method=method, mstep=mstep)
    batch = fit(model, X, Y, init, opts)
    for r in range(3):
        single = fit(model, X[r], Y[r], {k: v[r : r + 1] for k, v in init.items()}, opts)
        assert single.status[0] == batch.status[r]
        rel = abs(float(single.mean_loglik[0] - batch.mean_loglik[r])) / abs(float(single.mean_loglik[0]))
        assert rel < 1e-7


def test_a_failing_or_early_replication_does_not_change_the_others(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 1500, 3)
    opts = FitOptions(method="em", mstep="bfgs")
    reference = fit(model, X, Y, init, opts)
    Y_bad = Y.clone()
    Y_bad[0, 5] = float("nan")  # replication 0 cannot be evaluated
    early = {k: v.clone() for k, v in init.items()}
    for k in early:  # replication 2 starts at its own optimum, so it stops at once
        early[k][2] = reference.params[k][2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mixed = fit(model, X, Y_bad, early, opts)
    assert mixed.status[0].startswith("failed")
    assert all(torch.isfinite(v[0]).all() for v in mixed.params.values())
    assert mixed.status[1] == "converged" and mixed.status[2] == "converged"
    assert int(mixed.n_iter[2]) <= 2
    assert float(mixed.mean_loglik[1]) == pytest.approx(float(reference.mean_loglik[1]), rel=1e-12)
    assert float(mixed.mean_loglik[2]) == pytest.approx(float(reference.mean_loglik[2]), rel=1e-9)


def test_em_and_direct_reach_the_same_optimum(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 5000, 2)
    em = fit(model, X, Y, init, FitOptions(method="em", mstep="bfgs", tol=1e-11))
    direct = fit(model, X, Y, init, FitOptions(method="direct"))
    torch.testing.assert_close(em.mean_loglik, direct.mean_loglik, rtol=1e-8, atol=0)
    for k in em.params:
        torch.testing.assert_close(em.params[k], direct.params[k], rtol=0, atol=1e-3)


def test_unconverged_fit_warns_with_advice(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 500, 1, scale=0.3)
    with pytest.warns(RuntimeWarning, match="raise fit.max_iter"):
        res = fit(model, X, Y, init, FitOptions(method="em", mstep="bfgs", max_iter=1))
    assert res.status == ["max_iter"] and not bool(res.converged[0])


def test_bounds_keep_estimates_inside(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 300, 2, scale=0.3)
    bounds = {"beta": 1.0, "tau": 1.5, "expert": 2.0, "nu": [1e-4, 1e-2]}
    init["gate.tau"] = init["gate.tau"].clamp(-1.4, 1.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = fit(model, X, Y, init, FitOptions(method="direct", bounds=bounds, max_iter=300))
    assert float(res.params["gate.tau"].abs().max()) <= 1.5
    assert float(res.params["gate.beta"].abs().max()) <= 1.0
    assert float(res.params["prompts.0.nu"].min()) >= 1e-4


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="fit.method"):
        FitOptions(method="newton")
    with pytest.raises(ValueError, match="fit.mstep"):
        FitOptions(mstep="adam")
