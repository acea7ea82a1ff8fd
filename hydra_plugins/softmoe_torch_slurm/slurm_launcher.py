"""The SLURM launcher of conf/hydra/launcher/slurm.yaml: Hydra's submitit launcher, except that a
job that ends without a result (scancel, killed, past its time limit) is reported in one line with
its state, its log and how to resume, instead of a long traceback.

It lives in the hydra_plugins namespace because Hydra instantiates launchers only from there."""

import re
import sys
from pathlib import Path

_NO_RESULT = re.compile(r"Job (\S+) \(task: \d+\) with path (\S+)\s+has not produced any output \(state: ([^)]*)\)")

try:  # Hydra imports every plugin module at start-up; without the launchers extra this one is empty
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:
    pass
else:

    class SlurmLauncher(_SubmititSlurmLauncher):
        def launch(self, job_overrides, initial_job_idx):
            try:
                return super().launch(job_overrides, initial_job_idx)
            except UncompletedJobError as err:
                sys.exit(f"error: {describe_uncompleted(str(err))}")


def describe_uncompleted(message: str) -> str:
    """submitit's multi-line 'has not produced any output' message -> one line saying what to do."""
    found = _NO_RESULT.search(message)
    if not found:
        return message.strip().splitlines()[0]
    job, result, state = found.groups()
    log = Path(result).with_name(Path(result).name.replace("_result.pkl", "_log.err"))
    return (
        f"SLURM job {job} ended without a result (state: {state}); its log: {log}. Finished fits are kept: "
        "rerun the same command to resume, once squeue shows no job of this sweep"
    )
