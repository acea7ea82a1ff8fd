"""Shared behaviour of the command-line entries: user errors become one line and exit code 2,
an interrupt one line and exit code 130; output paths are checked before anything is written."""

import functools
import os
import sys
from pathlib import Path

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .errors import UserError


def one_line_errors(func):
    """Run func; a ValueError or an OmegaConf error (bad input or config, e.g. a missing
    mandatory value) prints 'error: ...' (one line) to stderr and exits 2; Ctrl-C prints
    'interrupted: ...' (one line) and exits 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MissingMandatoryValue as err:
            print(f"error: {err.full_key} is required; add {err.full_key}=... to the command", file=sys.stderr)
            sys.exit(2)
        except (ValueError, OmegaConfBaseException) as err:
            print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as err:
            print(
                f"interrupted: {str(err) or 'stopped before writing a result; run the command again'}", file=sys.stderr
            )
            sys.exit(130)

    return wrapper


def check_writable(path, key: str, directory: bool = False) -> Path:
    """Raise UserError unless ``path`` (a file, or a directory if ``directory``) can be created
    or overwritten: its first existing ancestor must be a writable directory."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind = "a directory" if path.is_dir() else "a file"
        raise UserError(f"{key}={path} is {kind}; choose a {'directory' if directory else 'file'} path for {key}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{key}={path} cannot be created: {parent} is a file, not a directory; choose another {key}")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise UserError(f"{key}={path} cannot be written: no permission for {target}; choose another {key}")
    return path


PATH_KEYS = {"hydra.run.dir": True, "hydra.sweep.dir": True, "out": False}  # override -> is a directory


@one_line_errors
def check_path_overrides(argv) -> None:
    """Check every output path among the command-line overrides (Hydra creates its run
    directory before the entry function runs, so this runs first)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in PATH_KEYS and value not in ("", "null"):
            check_writable(value, key, PATH_KEYS[key])


def entry(main) -> None:
    """Run a Hydra ``main`` after checking the output paths in sys.argv."""
    check_path_overrides(sys.argv[1:])
    main()
