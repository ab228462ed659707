"""SLURM: requeue the job after a checkpoint, and notice a requeued job so it resumes.

With ``#SBATCH --signal=USR1@120 --requeue`` SLURM warns the job two minutes before
its time limit; the training loop writes ``last.pt`` and, from here, asks SLURM to
put the same job back in the queue. The requeued job sees ``SLURM_RESTART_COUNT``
and resumes instead of starting over. Jobs submitted by Hydra's submitit launcher
are requeued by submitit itself (see ``StopOnSignals.handoff``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger(__name__)


def job_id() -> str | None:
    """The SLURM job (array jobs: ``<array>_<task>``) this process belongs to, if any."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 on the first run or outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def requeue(job: str) -> bool:
    """``scontrol requeue <job>``; False (with a warning that says what to do) when it fails."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.warning("SLURM job %s: scontrol is not on PATH, so the job was not requeued; resubmit it with "
                    "resume=auto and the same hydra.run.dir.", job)  # fmt: skip
        return False
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (%s); submit jobs with --requeue, or resubmit with resume=auto "
                    "and the same hydra.run.dir.", job, done.stderr.strip() or f"exit {done.returncode}")  # fmt: skip
        return False
    log.warning("requeued SLURM job %s: it resumes from checkpoints/last.pt when it starts again", job)
    return True
