"""R's flexmix, the field's reference estimator for softmax-gated mixtures of linear experts
(FLXMRglm experts, FLXPmultinom gate), as an external oracle: on the same data and from the same
start, our MLE's log-likelihood is at least flexmix's and the estimates agree up to label order
(flexmix's variances carry a degrees-of-freedom correction, so its optimum is not quite the MLE).
Skips, saying why, where R or flexmix is not installed (.ci/run installs both from Debian)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from softmoe_torch import AffineExpert, Component, Estimator, Gaussian, MixtureOfExperts, SoftmaxGate

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "flexmix" / "fit_moe.R"


def _flexmix_missing() -> str | None:
    if shutil.which("Rscript") is None:
        return "Rscript is not installed (apt-get install r-base-core r-cran-flexmix)"
    probe = subprocess.run(["Rscript", "-e", "suppressMessages(library(flexmix))"], capture_output=True, text=True)
    return None if probe.returncode == 0 else "the R package flexmix is not installed (apt-get install r-cran-flexmix)"


pytestmark = pytest.mark.skipif(_flexmix_missing() is not None, reason=str(_flexmix_missing()))


def mixture(d, experts, biases, nus, beta, tau):
    comps = [Component(AffineExpert(d, eta=e, bias=b), Gaussian(), nu=v) for e, b, v in zip(experts, biases, nus)]
    return MixtureOfExperts(comps, SoftmaxGate(d, len(comps) - 1, beta=beta, tau=tau)).double()


CASES = {  # the sibling study's truth (d = 1, K = 2), and a K = 3 mixture in d = 2
    "sibling": dict(d=1, experts=[[20.0], [-20.0]], biases=[-5.0, 15.0], nus=[0.16, 0.09], beta=[[25.0]], tau=[-8.0]),
    "three_2d": dict(
        d=2,
        experts=[[1.0, -1.0], [-2.0, 0.5], [0.0, 2.0]],
        biases=[0.0, 3.0, -3.0],
        nus=[0.25, 0.5, 0.3],
        beta=[[2.0, 0.0], [-1.0, 2.0]],
        tau=[0.3, -0.5],
    ),
}


def run_flexmix(tmp_path, X, y, post) -> dict:
    data, start, out = tmp_path / "d.csv", tmp_path / "post.csv", tmp_path / "out.txt"
    header = ",".join([f"x{j + 1}" for j in range(X.shape[1])] + ["y"])
    np.savetxt(data, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.17g")
    np.savetxt(start, post, delimiter=",", fmt="%.17g")
    proc = subprocess.run(
        ["Rscript", str(SCRIPT), str(data), str(start), str(out), "1e-12"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return {k: float(v) for k, v in (line.split() for line in out.read_text().splitlines())}


@pytest.mark.parametrize("case", CASES)
def test_our_mle_matches_flexmix_from_the_same_start(tmp_path, case, one_thread):
    """Both start from the true model: flexmix from its posteriors (its first step is the M-step
    from them), ours from its parameters (EM's first step computes exactly those posteriors)."""
    spec = CASES[case]
    truth = mixture(**spec)
    n = 3000
    gen = torch.Generator().manual_seed(7)
    X = (
        torch.rand(n, spec["d"], generator=gen, dtype=torch.float64)
        if case == "sibling"
        else torch.randn(n, spec["d"], generator=gen, dtype=torch.float64)
    )
    y = truth.sample(X, generator=gen)
    with torch.no_grad():
        post = truth.responsibilities(X, y).numpy()
    flex = run_flexmix(tmp_path, X.numpy(), y.numpy(), post)
    start = {k: v.detach() for k, v in truth.trainable_parameters().items()}
    ours = Estimator(truth, "newton", bounds={"real": 100.0, "positive": [1e-6, 1e3]}).fit(X, y, start=start)
    assert ours.converged[0] and int(flex["components"]) == len(spec["nus"])
    ll = float(ours.loglik[0])
    assert ll >= flex["loglik"] - 1e-6 * abs(flex["loglik"])
    assert ll == pytest.approx(flex["loglik"], rel=1e-6)  # the same optimum (flexmix stops a little short of it)
    est = ours.estimates()
    K, d = len(spec["nus"]), spec["d"]
    theirs = [
        np.array([flex[f"slope_{j}_{i}"] for i in range(1, d + 1)] + [flex[f"intercept_{j}"]]) for j in range(1, K + 1)
    ]
    gates = [np.array([flex[f"gate_{j}_{i}"] for i in range(d + 1)]) for j in range(1, K + 1)]  # (intercept, slopes)
    match = []  # flexmix's component of each of ours: the one with the nearest expert
    for k in range(K):
        ours_k = np.concatenate(
            [est[f"components.{k}.expert.eta"].numpy(), [float(est[f"components.{k}.expert.bias"])]]
        )
        j = int(np.argmin([np.abs(ours_k - t).max() for t in theirs]))
        np.testing.assert_allclose(ours_k, theirs[j], rtol=1e-4, atol=1e-4)
        # flexmix's Gaussian sigma^2 is the weighted residual variance with a degrees-of-freedom correction,
        # sum w r^2 / (mean(w) (n - rank)), not the MLE sum w r^2 / sum w: ours is the MLE (hence our higher loglik)
        assert float(est[f"components.{k}.nu"]) == pytest.approx(
            flex[f"sigma_{j + 1}"] ** 2 * (n - d - 1) / n, rel=1e-3
        )
        match.append(j)
    assert sorted(match) == list(range(K))
    for k in range(1, K):  # gate logits against component 0, ours' reference
        ours_gate = np.concatenate([[float(est["gate.tau"][k - 1])], est["gate.beta"][k - 1].numpy()])
        np.testing.assert_allclose(ours_gate, gates[match[k]] - gates[match[0]], rtol=1e-3, atol=1e-3)
