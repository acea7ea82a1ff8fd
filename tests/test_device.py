"""Device and dtype selection; the CUDA path where a GPU exists."""

import pytest
import torch

from softmoe_torch.estimation.device import resolve_device, resolve_dtype
from softmoe_torch.estimation.driver import FitOptions, fit_batch
from softmoe_torch.estimation.init import near_truth
from softmoe_torch.settings.setting import Setting
from softmoe_torch.study.simulate import simulate


def test_auto_and_cpu():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert resolve_dtype("float64", torch.device("cpu")) == torch.float64


def test_bad_names_are_clear():
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_mps_falls_back_to_float32_with_a_warning():
    with pytest.warns(RuntimeWarning, match="MPS has no float64"):
        assert resolve_dtype("float64", torch.device("mps")) == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_matches_cpu(compose_cfg):
    setting = Setting(compose_cfg(["setting=distinguishable"]).setting)
    X, Y = simulate(setting, 2000, range(4), seed=0)
    init = near_truth(setting.model(), setting.truth(2000), 4, 0.1, 1)
    opts = FitOptions(method="direct")
    cpu = fit_batch(setting.model(), X, Y, init, opts)
    gpu = fit_batch(setting.model(device="cuda"), X.cuda(), Y.cuda(), init, opts)
    torch.testing.assert_close(gpu.mean_loglik.cpu(), cpu.mean_loglik, rtol=1e-9, atol=0)
