"""A sweep's results store: results.csv (one typed row per fit, keyed by setting, n, rep and seed,
rewritten atomically) and fingerprint.json (what makes the rows comparable: a resume into a
directory of another configuration is refused)."""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError

HEAD = ("setting", "n", "rep", "seed")
TAIL = ("mean_loglik", "loglik_truth", "moved", "hellinger", "n_iter", "converged", "status", "at_bound", "seconds")


def columns(setting) -> list:
    """results.csv's columns for ``setting``: the fit's key, the setting's own (its errors), the fit's record."""
    return [*HEAD, *setting.columns, *TAIL]


def _bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"expected True or False, got {text!r}")
    return text == "True"


TYPES = {
    "n": int,
    "rep": int,
    "seed": int,
    "mean_loglik": float,
    "loglik_truth": float,
    "moved": float,
    "hellinger": float,
    "n_iter": int,
    "converged": _bool,
    "seconds": float,
}  # and float for every err_ column


def typed_row(row: dict, where: str) -> dict:
    """A results.csv row of strings -> the same row with Python values (as ``_rows`` makes them)."""
    out = dict(row)
    types = {**TYPES, **{k: float for k in row if k.startswith("err_")}}
    for key, cast in types.items():
        try:
            out[key] = cast(row[key])
        except (TypeError, ValueError):
            raise UserError(
                f"{where}: bad {key} value {row[key]!r} (a damaged file?); "
                "delete that line (its fit is redone) or move the file away"
            ) from None
    return out


@dataclass
class Results:
    """The rows of results.csv, keyed by (setting, n, rep, seed); values typed as ``typed_row`` does."""

    path: Path
    rows: list
    columns: list

    @classmethod
    def load(cls, path, columns: list):
        """Read results.csv (if any) of the given ``columns`` (``columns(setting)``), typing every
        row once; a damaged file is a UserError."""
        path = Path(path)
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is not None and reader.fieldnames != list(columns):
                    raise UserError(
                        f"{path} has columns {','.join(reader.fieldnames)}, expected {','.join(columns)}; "
                        "move it away (it is not this version's results file, or another setting's)"
                    )
                rows = [typed_row(r, f"{path} line {reader.line_num}") for r in reader]
        return cls(path, rows, list(columns))

    def done(self, setting: str, seed: int) -> set:
        """(n, rep) of finished fits; a batch that raised ('error: ...') is not finished."""
        return {
            (r["n"], r["rep"])
            for r in self.rows
            if r["setting"] == setting and r["seed"] == seed and not r["status"].startswith("error")
        }

    def add(self, new_rows):
        """Add rows (replacing earlier rows of the same fits) and rewrite the file atomically
        (write a temporary file, then rename), so a crash keeps the old file or the new one."""
        key = lambda r: (r["setting"], r["n"], r["rep"], r["seed"])  # noqa: E731
        fresh = {key(r) for r in new_rows}
        rows = [r for r in self.rows if key(r) not in fresh] + list(new_rows)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.rows = rows  # only once on disk, so an interrupt never counts rows the file lacks


def fit_rows(setting, n, reps, seed, result, errors, diagnostics) -> list:
    """results.csv rows of the fits of replications ``reps`` at size n: key, errors, diagnostics, record."""
    share = result.seconds / len(reps)
    return [
        {
            "setting": setting.name,
            "n": n,
            "rep": rep,
            "seed": seed,
            **{k: v[j] if isinstance(v[j], str) else float(v[j]) for k, v in errors.items()},
            "mean_loglik": float(result.mean_loglik[j]),
            **{k: float(v[j]) for k, v in diagnostics.items()},
            "n_iter": int(result.n_iter[j]),
            "converged": bool(result.converged[j]),
            "status": result.status[j],
            "at_bound": " ".join(result.at_bound[j]),
            "seconds": share,
        }
        for j, rep in enumerate(reps)
    ]


def failed_rows(setting, n, reps, seed, reason) -> list:
    """results.csv rows of a batch that raised: NaN errors, status 'error: <reason>' (redone on resume)."""
    nan = float("nan")
    return [
        {
            "setting": setting.name,
            "n": n,
            "rep": rep,
            "seed": seed,
            **{c: nan if c.startswith("err_") else "" for c in setting.columns},
            "mean_loglik": nan,
            "loglik_truth": nan,
            "moved": nan,
            "hellinger": nan,
            "n_iter": 0,
            "converged": False,
            "status": f"error: {reason}",
            "at_bound": "",
            "seconds": 0.0,
        }
        for rep in reps
    ]


FINGERPRINT_KEYS = ("setting", "fit", "init", "device", "dtype")
HOW_NOT_WHAT = ("compile",)  # fit options that change how fast a fit runs, not its numbers (beyond rounding)


def fingerprint(cfg: DictConfig, plan) -> dict:
    """What makes results comparable: setting, fit (less ``HOW_NOT_WHAT``), init and the resolved
    device type and dtype."""
    mine = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("setting", "fit", "init")}
    mine["fit"] = {k: v for k, v in mine["fit"].items() if k not in HOW_NOT_WHAT}
    mine.update(device=plan.device.type, dtype=str(plan.dtype).removeprefix("torch."))
    return json.loads(json.dumps(mine))


def check_fingerprint(cfg: DictConfig, plan, out_dir: Path):
    """Refuse to resume into a directory whose results came from another configuration; the
    first run writes fingerprint.json (atomically)."""
    mine = fingerprint(cfg, plan)
    path = out_dir / "fingerprint.json"
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(
                f"{path} is not valid JSON (an interrupted write?); delete it if results.csv "
                "came from this same command"
            ) from None
        changed = [k for k in FINGERPRINT_KEYS if k in theirs and theirs[k] != mine[k]]
        if changed:
            raise UserError(
                f"{out_dir} holds results of another configuration (different {', '.join(changed)}); "
                "choose another directory with hydra.run.dir=..."
            )
    else:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(mine, indent=2))
        os.replace(tmp, path)
