"""Every config option composes and instantiates (Hydra compose API)."""

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from softmoe_torch.errors import UserError
from softmoe_torch.settings.setting import Setting, load_setting
from softmoe_torch.study.config_checks import fit_options, sample_sizes, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("setting", "fit", "init", "sweep", "monitor")
}


def _kind(setting: str) -> str:
    """The composed ``setting.kind`` of a packaged setting (a setting may inherit it)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"setting={setting}"]).setting.get("kind", "contaminated")


KINDS = {s: _kind(s) for s in OPTIONS["setting"]}
MOE_SETTINGS = [s for s, k in KINDS.items() if k == "moe"]
REGRESSION_SETTINGS = [s for s, k in KINDS.items() if k == "regression"]
CONTAMINATED_SETTINGS = [s for s, k in KINDS.items() if k == "contaminated"]


def test_the_mixture_of_experts_settings_are_known():
    assert MOE_SETTINGS == ["softmax_gaussian_moe"]
    assert REGRESSION_SETTINGS == ["sigmoid_moe", "sigmoid_moe_regime1", "sigmoid_moe_regime2", "softmax_ridge_moe"]


@pytest.mark.parametrize("setting", MOE_SETTINGS)
def test_every_moe_setting_builds_its_model_and_truth(compose_cfg, setting):
    s = load_setting(compose_cfg([f"setting={setting}"]).setting)
    model, truth = s.model(), s.true_model()
    assert len(model.components) == s.n_components and len(truth.components) == s.n_true
    assert not any(c.frozen for c in model.components)
    assert set(s.truth()) == set(truth.trainable_parameters())
    with pytest.raises(ValueError, match="mixture of experts"):
        Setting(compose_cfg([f"setting={setting}"]).setting)


@pytest.mark.parametrize("setting", CONTAMINATED_SETTINGS)
def test_every_setting_builds_its_model_and_truth(compose_cfg, setting):
    cfg = compose_cfg([f"setting={setting}"])
    s = Setting(cfg.setting)
    model = s.true_model(1000)
    assert model.pretrained.frozen and model.pretrained.nu.item() == pytest.approx(0.001)
    assert torch.equal(model.pretrained.expert.eta, torch.eye(8, dtype=torch.float64)[0])
    truth = s.truth(1000)
    assert truth["gate.beta"].shape == (1, 8) and float(truth["gate.tau"]) == 1.0
    assert set(cfg.setting.theory_slopes) == {"beta", "exp_tau", "eta", "nu"}


def test_settings_encode_the_paper(compose_cfg):
    """The paper's settings: eta*, nu* of each setting at n = 4096 (n^-1/8 = 1/sqrt(8))."""
    n, shrink = 4096, 4096**-0.125
    e1 = torch.eye(8, dtype=torch.float64)[0]
    expect = {
        "distinguishable": ("Laplace", -e1, 0.001),
        "distinguishable_shared_mean": ("Laplace", e1, 0.001),
        "nondistinguishable_eta": ("Gaussian", e1 * (1 + shrink), 0.001),
        "nondistinguishable_nu": ("Gaussian", e1, 0.001 * (1 + shrink)),
        "nondistinguishable_nu_flipped": ("Gaussian", -e1, 0.001 * (1 + shrink)),
    }
    for name, (f0, eta, nu) in expect.items():
        s = Setting(compose_cfg([f"setting={name}"]).setting)
        assert type(s.pretrained().density).__name__ == f0
        torch.testing.assert_close(s.truth(n)["prompts.0.expert.eta"], eta)
        assert float(s.truth(n)["prompts.0.nu"]) == pytest.approx(nu)
        torch.testing.assert_close(s.truth(n)["gate.beta"][0], torch.full((8,), 8**-0.5, dtype=torch.float64))


@pytest.mark.parametrize("fit", OPTIONS["fit"])
def test_every_fit_option_instantiates(compose_cfg, fit):
    cfg = compose_cfg([f"fit={fit}", "fit.max_iter=7"])
    opts = fit_options(cfg, torch.float64)
    assert opts.method == cfg.fit.method and opts.max_iter == 7
    assert fit_options(cfg, torch.float32).tol >= 1e-5


def test_fit_compile_is_on_for_large_sweeps_on_the_cpu_and_off_for_single_fits(compose_cfg):
    """fit.compile=auto: a sweep of at least 2e6 samples x starts on the CPU compiles (the K = 3
    sibling study: 40 replications x 5 starts over 1e4..1e5), a tiny one does not, nor does a
    single fit; true and false are taken as given, anything else is a one-line error."""
    moe = ["setting=softmax_gaussian_moe", "setting.n_components=3", "init=near_truth_shrinking", "device=cpu"]
    assert validate(compose_cfg([*moe, "sweep=sibling_over", "init.n_init=5"])).opts.compile is True
    assert validate(compose_cfg([*moe, "sweep=tiny"])).opts.compile is False
    assert validate(compose_cfg([*moe, "sweep=tiny", "fit.compile=true"])).opts.compile is True
    assert validate(compose_cfg([*moe, "sweep=sibling_over", "fit.compile=false"])).opts.compile is False
    assert fit_options(compose_cfg(moe), torch.float64).compile is False
    with pytest.raises(UserError, match="fit.compile must be true, false or auto, got 'yes'"):
        validate(compose_cfg([*moe, "sweep=tiny", "fit.compile=yes"]))


def test_a_sweep_resumes_across_fit_compile_but_not_across_what_changes_the_fits(compose_cfg):
    """fit.compile changes how fast, not what (the numbers to rounding): results stay comparable."""
    from softmoe_torch.study.store import fingerprint

    def print_of(*extra):
        cfg = compose_cfg(["setting=softmax_gaussian_moe", "sweep=tiny", "device=cpu", *extra])
        return fingerprint(cfg, validate(cfg))

    assert print_of("fit.compile=true") == print_of("fit.compile=false") == print_of()
    assert print_of("fit.tol=1e-6") != print_of()


@pytest.mark.parametrize("init", OPTIONS["init"])
@pytest.mark.parametrize("sweep", OPTIONS["sweep"])
def test_init_and_sweep_options_compose(compose_cfg, init, sweep):
    cfg = compose_cfg([f"init={init}", f"sweep={sweep}"])
    assert cfg.init.policy in ("near_truth", "random")
    sizes = sample_sizes(cfg.sweep)
    assert sizes == sorted(sizes) and len(sizes) == cfg.sweep.num_sizes


def test_paper_sweep_sizes(compose_cfg):
    sizes = sample_sizes(compose_cfg().sweep)
    assert len(sizes) == 20 and sizes[0] == 1000 and sizes[-1] == 100000
    assert sample_sizes(compose_cfg(["sweep.sizes=[300,100]"]).sweep) == [100, 300]


def test_monitor_and_fit_data_configs(compose_cfg):
    assert compose_cfg().monitor.tensorboard is True
    cfg = compose_cfg(["data=x.npz", "setting=nondistinguishable_nu", "fit=direct"], config_name="fit_data")
    assert cfg.data == "x.npz" and cfg.fit.method == "direct"
    assert instantiate(cfg.setting.prompt.density).__class__.__name__ == "Gaussian"


def test_unknown_option_is_a_composition_error(compose_cfg):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["setting=nope"])
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["fit.no_such_key=1"])


def test_slurm_launcher_config_composes(compose_cfg):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.cpus_per_task == 4


def test_random_starts_do_not_depend_on_the_batch(compose_cfg):
    from softmoe_torch.study.sweep import sweep_starts

    cfg = compose_cfg(["init=random", "init.n_init=2"])
    setting = Setting(cfg.setting)
    model = setting.model()
    Y = torch.randn(3, 50, dtype=torch.float64)
    together = sweep_starts(cfg, setting, model, 50, [0, 1, 2], Y)
    alone = sweep_starts(cfg, setting, model, 50, [2], Y[2:])
    assert len(together) == 2
    for k in together[0]:
        torch.testing.assert_close(together[1][k][2:], alone[1][k])
