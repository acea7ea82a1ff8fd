"""Hydra entry: a parametric-bootstrap likelihood-ratio test on a user's data file.

    python -m softmoe_torch.bootstrap_test data=FILE setting=NAME [test=contamination|prompts] [test.B=999]
        [fit=newton] [out=PATH]

``test=contamination`` (default): is there a prompt at all? H0 the setting's frozen pre-trained
component alone, H1 its contaminated model (its fit starting at the null, or from the init group's
starts with ``test.starts=policy``) and a broad contamination of f0 (``test.broad``; null: none),
the two parts combined by min-p. ``test=prompts``: setting.n_prompts prompts against
``test.extra`` more. Every fit of the test (the observed one and the B refits) runs the same
procedure (``fit``, ``init``, the variance floor ``test.variance_floor``, the alternative's cap of
``test.iterations`` iterations). Writes a JSON result
(statistic, pvalue, B, n_failed, seconds, the bootstrap statistics, the refits' statuses) and a
histogram beside it, prints the summary and the paths. Bad input gives one line and exit code 2.
``python -m softmoe_torch.test`` is the old name of this command (kept for one release)."""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from .cli import entry, one_line_errors
from .data import load_data
from .errors import UserError
from .estimation.device import keep_freed_memory
from .fit import build_estimator
from .lrt import contamination_test, prompts_test, with_variance_floor
from .lrt.bootstrap import START
from .lrt.broad import RATIOS
from .settings.configs import CONF_DIR, config_number, register_resolvers
from .settings.setting import Setting


def contamination(cfg: DictConfig, setting: Setting, X, y, options: dict):
    """H0 the setting's frozen pre-trained component alone, H1 its contaminated model."""
    return contamination_test(
        procedure(cfg, setting.model()),
        X,
        y,
        **options,
        starts=cfg.test.get("starts", START),
        broad=broad_ratios(cfg.test.get("broad", list(RATIOS))),
    )


def broad_ratios(value):
    """test.broad: a list of variance ratios (each > 1; the library checks), or null for no broad part."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple, ListConfig)) or not len(value):
        raise UserError(
            f"test.broad must be a list of variance ratios, e.g. test.broad=[10,100,1000], or null; got {value!r}"
        )
    return [config_number(k, "test.broad", float) for k in value]


def prompts(cfg: DictConfig, setting: Setting, X, y, options: dict):
    """H0 setting.n_prompts prompts, H1 test.extra >= 1 more (H1 nests H0; the gate's config reads
    setting.n_prompts)."""
    null = setting.model()
    cfg.setting.n_prompts = setting.n_prompts + config_number(cfg.test.extra, "test.extra", int, 1)
    alternative = procedure(cfg, Setting(cfg.setting).model())
    return prompts_test(procedure(cfg, null), alternative, X, y, **options, starts=cfg.test.get("starts", "policy"))


KINDS = {"contamination": contamination, "prompts": prompts}  # test.kind -> the test; a new kind registers here


def test_file(cfg: DictConfig):
    """Run cfg.test on the file cfg.data; write the JSON and the histogram; return the ``BootstrapTest``."""
    kind = cfg.test.kind
    if kind not in KINDS:
        raise UserError(f"test.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if cfg.init.policy != "random":
        raise UserError("the test refits bootstrap data sets whose truth is unknown; use init=random")
    X, y, _ = load_data(cfg.data)
    cfg.setting.dim = X.shape[1]  # d is the data's
    iterations = cfg.test.get("iterations")
    options = dict(
        B=config_number(cfg.test.B, "test.B", int),
        seed=config_number(cfg.test.seed, "test.seed", int),
        unconverged=cfg.test.unconverged,
        progress=bool(cfg.progress),
        iterations=None if iterations is None else config_number(iterations, "test.iterations", int, 1),
    )
    result = KINDS[kind](cfg, Setting(cfg.setting), X, y, options)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                **result.to_dict(),
                "setting": cfg.setting.name,
                "data": str(cfg.data),
                "method": cfg.fit.method,
                "n_init": int(cfg.init.n_init),
                "iterations": options["iterations"],
                "variance_floor": cfg.test.variance_floor,
            },
            indent=1,
        )
    )
    result.histogram(out.with_suffix(".png"))
    return result


def procedure(cfg: DictConfig, model):
    """The estimator of every fit of the test: cfg's fit and init, with the variance floor test.variance_floor."""
    estimator = build_estimator(cfg, model)
    floor = cfg.test.variance_floor
    return estimator if floor is None else with_variance_floor(estimator, floor)


@hydra.main(config_path=CONF_DIR, config_name="test_data", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    register_resolvers()
    keep_freed_memory()
    result = test_file(cfg)
    print(result.summary())
    out = Path(cfg.out).resolve()
    print(out)
    print(out.with_suffix(".png"))


if __name__ == "__main__":
    entry(main)
