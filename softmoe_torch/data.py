"""Reading a user's data file: ``.npz`` with X (n, d), y (n,) and optional init_* arrays, or
``.csv`` with a header x1..xd,y. Every problem is a one-line ``UserError``."""

import csv
import zipfile
from pathlib import Path

import numpy as np

from .errors import UserError
from .model.names import PAPER_NAMES

INIT_ARRAYS = {f"init_{k}": name for k, name in PAPER_NAMES.items()}  # array in the file -> parameter of a K = 1 model


def _read_csv(path: Path):
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: the file is empty")
        header = [h.strip() for h in header]
        d = len(header) - 1
        expected = [f"x{i}" for i in range(1, d + 1)] + ["y"]
        if d < 1 or header != expected:
            raise UserError(f"{path}: expected a header x1,...,xd,y; got {','.join(header)}")
        rows = [(reader.line_num, row) for row in reader if row]
    for line, row in rows:
        if len(row) != d + 1:
            raise UserError(
                f"{path} line {line}: {len(row)} values, but the header has {d + 1} columns; fix or remove that row"
            )
    try:
        values = np.array([[float(v) for v in row] for _, row in rows], dtype=float).reshape(-1, d + 1)
    except ValueError as err:
        raise UserError(f"{path}: not a number: {err}; every value after the header must be numeric") from None
    return values[:, :d], values[:, d], {}


def _read_npz(path: Path):
    if not zipfile.is_zipfile(path):
        what = "empty (0 bytes)" if path.stat().st_size == 0 else "not an .npz archive"
        raise UserError(f"{path}: the file is {what}; write it with numpy.savez(path, X=X, y=y)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise UserError(
                f"{path}: not a readable .npz file ({err}); write it with numpy.savez(path, X=X, y=y)"
            ) from None
        raise UserError(
            f"{path}: holds Python objects, which are never unpickled; save numeric arrays X, y with numpy.savez"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(
            f"{path}: not a readable .npz file ({err}); write it with numpy.savez(path, X=X, y=y)"
        ) from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise UserError(f"{path}: missing array(s) {', '.join(missing)}; a data file needs X (n, d) and y (n,)")
    init = {k: arrays[k] for k in INIT_ARRAYS if k in arrays}
    return arrays["X"], arrays["y"], init


def load_data(path):
    """-> X (n, d) float64, y (n,) float64, init {parameter name: array}; validated against
    shapes, finiteness and emptiness."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.suffix == ".npz":
        X, y, init = _read_npz(path)
    elif path.suffix == ".csv":
        X, y, init = _read_csv(path)
    else:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .npz or .csv")
    try:
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{path}: X and y must be numeric arrays") from None
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise UserError(f"{path}: expected X of shape (n, d) and y of shape (n,), got {X.shape} and {y.shape}")
    if X.shape[0] == 0:
        raise UserError(f"{path}: the data set is empty")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise UserError(f"{path}: X and y must be finite (found NaN or inf)")
    for key, value in init.items():
        try:
            value = init[key] = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise UserError(f"{path}: {key} must be numeric") from None
        if not np.isfinite(value).all():
            raise UserError(f"{path}: {key} must be finite")
    return X, y, {INIT_ARRAYS[k]: v for k, v in init.items()}
