"""Shared behaviour of the command-line entries: user errors become one line and exit code 2."""
import functools
import sys


class UserError(ValueError):
    """Bad input from the user (a file, a config value); reported in one line."""


def one_line_errors(func):
    """Run func; a ValueError (bad input or config) prints 'error: ...' to stderr and exits 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
