"""Restoring frozen networks from files: state-dict checkpoints and TorchScript modules."""

import torch

from ..errors import module_name, one_line


def load_checkpoint(module, path, what: str):
    """Load a state dict saved by ``torch.save(net.state_dict(), path)`` into ``module`` (strict,
    ``torch.load(weights_only=True)``); returns the module. ValueError (one line) if it does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    except Exception as err:
        raise ValueError(
            f"cannot load the {what} checkpoint {path} into {module_name(module)}: {one_line(err)}"
        ) from None
    return module


def load_torchscript(path, what: str):
    """A module saved by ``torch.jit.save`` (scripted or traced), on the CPU."""
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as err:
        raise ValueError(f"cannot load the {what} TorchScript file {path}: {one_line(err)}") from None
