"""Shared behaviour of the command-line entries: user errors become one line and exit code 2."""
import functools
import sys

from omegaconf.errors import OmegaConfBaseException


class UserError(ValueError):
    """Bad input from the user (a file, a config value); reported in one line."""


def one_line_errors(func):
    """Run func; a ValueError or an OmegaConf error (bad input or config, e.g. a missing
    mandatory value) prints 'error: ...' (one line) to stderr and exits 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ValueError, OmegaConfBaseException) as err:
            print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
            sys.exit(2)

    return wrapper
