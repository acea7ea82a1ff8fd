"""The package's user-facing errors and their one-line messages; imports nothing of the package,
so every layer may raise them."""


class UserError(ValueError):
    """Bad input from the user (a file, a config value); reported in one line."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C whose message says what was kept and how to resume."""


def one_line(err: Exception) -> str:
    """An exception's message with its lines joined (hydra's chained cause where there is one)."""
    lines = [ln.strip() for ln in str(err.__cause__ or err).splitlines()]
    text = " ".join(ln for ln in lines if ln and not ln.startswith("full_key:"))
    return text or err.__class__.__name__


def module_name(module) -> str:
    """A module's class name (a TorchScript module's original one)."""
    return getattr(module, "original_name", None) or type(module).__qualname__
