"""SLURM sweeps (``hydra/launcher=slurm``, hydra-submitit-launcher), made safe and legible.

- **Checked before anything is written**: the job request the sweep will submit is built with
  submitit's own sbatch writer and tried with ``sbatch --test-only``; a refusal (a GPU request on
  nodes without GPUs, an unknown partition, more CPUs or memory than a node has) is one line
  naming the ``hydra.launcher.*`` option to change.
- **The jobs run this reprlab**: the submitting process puts the directory holding the
  ``reprlab`` package it runs first on ``PYTHONPATH``, which ``sbatch`` passes to the jobs (its
  default ``--export=ALL``), so the pickled job unpickles against the same code; the job's
  Python is the submitting one (``sys.executable``, submitit's default).
- **Job states without accounting**: submitit polls ``sacct``; where accounting is off it warns
  on every poll and cannot tell that a job died (no result file): the sweep would wait forever.
  Here the states are read from ``squeue`` instead (said once); a job that left the queue without
  a result counts as finished.
- **Every job accounted for**: each job's SLURM id and log are printed when submitted; a job
  that dies (``scancel``, time limit, ``kill -9``, out of memory) does not abort the sweep: its
  run.json is marked ``interrupted`` (cancelled, timed out, preempted) or ``failed`` with SLURM's
  state and reason, and it is listed as failed in the summary (exit 1). Its store entry keeps
  the resumable checkpoint, so running the sweep again resumes the training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reprlab.errors import ReprlabError

log = logging.getLogger("reprlab")

# sbatch options that name files of one submission, not resources: not part of the check.
_PER_SUBMISSION = ("--output", "--error", "--array", "--open-mode", "--signal", "--wckey")

# (a fragment of sbatch's refusal, the options to change)
_REFUSALS = (
    ("generic resource", "hydra.launcher.gpus_per_node (0 on nodes without GPUs)"),
    ("gres", "hydra.launcher.gpus_per_node (0 on nodes without GPUs)"),
    ("partition", "hydra.launcher.partition (`sinfo -s` lists them)"),
    ("account", "hydra.launcher.account"),
    ("qos", "hydra.launcher.qos"),
    ("time limit", "hydra.launcher.timeout_min"),
    ("memory", "hydra.launcher.mem_gb"),
    ("constraint", "hydra.launcher.constraint"),
    ("feature", "hydra.launcher.constraint"),
    (
        "node configuration is not available",
        "hydra.launcher.cpus_per_task, mem_gb, gpus_per_node or constraint (they ask for more "
        "than any node of the partition has; `sinfo -o '%P %c %m %G'` shows what nodes have)",
    ),
    ("unable to contact slurm controller", "nothing in the sweep: the SLURM controller is down"),
)


def executor_parameters(launcher: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(init, update) parameters of submitit's executor for a resolved ``hydra.launcher`` node,
    split exactly as hydra-submitit-launcher splits them."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = {k: v for k, v in launcher.items() if k != "_target_"}
    init = {"slurm_max_num_timeout": params.pop("max_num_timeout", 0)}
    params.pop("submitit_folder", None)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    return init, {(k if k in base else f"slurm_{k}"): v for k, v in params.items()}


def sbatch_options(launcher: Mapping[str, Any], folder: Path) -> list[str]:
    """The resource options (``--partition=...``, ``--gpus-per-node=...``) of the sbatch script
    hydra-submitit-launcher would submit for ``launcher``; writes nothing."""
    import submitit

    init, params = executor_parameters(launcher)
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder, **init)
    executor.update_parameters(**params)
    text = executor._executor._make_submission_file_text("true", "check")
    options = []
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            option = line.split(None, 1)[1].strip()
            if not option.startswith(_PER_SUBMISSION):
                options.append(option)
    return options


def refusal_line(stderr: str, options: Sequence[str]) -> str:
    """sbatch's refusal as one line naming the ``hydra.launcher`` option to change."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = "; ".join(dict.fromkeys(line.removeprefix("sbatch: error: ") for line in lines))
    lower = said.lower()
    change = next((fix for fragment, fix in _REFUSALS if fragment in lower), None)
    remedy = f"change {change}" if change else "change the hydra.launcher.* option it names"
    return f"sbatch refuses the sweep's job request ({' '.join(options)}): {said}; {remedy}"


def check_request(
    launcher: Mapping[str, Any], run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> None:
    """Raise ReprlabError (one line) when ``sbatch --test-only`` refuses the job request of
    ``launcher`` (a resolved ``hydra.launcher`` node). Submits and writes nothing."""
    try:
        options = sbatch_options(launcher, Path(os.devnull))
    except (ValueError, TypeError) as err:  # an option submitit does not know, or a bad value
        raise ReprlabError(f"hydra.launcher: {str(err).splitlines()[0]}") from None
    try:
        done = run(
            ["sbatch", "--test-only", *options, "--wrap=true"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise ReprlabError(f"sbatch --test-only could not run: {err}") from None
    if done.returncode != 0:
        raise ReprlabError(refusal_line(done.stderr or done.stdout, options))


def submission_problem(err: BaseException) -> str | None:
    """One line for sbatch refusing a submission that passed the up-front check (e.g. the
    cluster changed meanwhile), or None when ``err`` is something else."""
    text = str(err)
    if (
        type(err).__name__ not in ("FailedJobError", "FailedSubmissionError")
        or "sbatch" not in text
    ):
        return None
    return refusal_line(text, [])


def use_this_code() -> None:
    """Put the directory holding the running ``reprlab`` first on ``PYTHONPATH``, so SLURM jobs
    (which inherit this environment) import the same code, not another installation."""
    import reprlab

    root = str(Path(reprlab.__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths[:1] != [root]:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *(p for p in paths if p != root)])


# --- job states without accounting -----------------------------------------------------------


def accounting_enabled(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    """Whether the cluster keeps job accounting (``sacct`` works)."""
    try:
        done = run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True
    for line in done.stdout.splitlines():
        if line.replace(" ", "").startswith("AccountingStorageType="):
            return not line.strip().endswith("accounting_storage/none")
    return True


def queue_states(job_ids: Sequence[str]) -> dict[str, dict[str, str]] | None:
    """``squeue``'s view of ``job_ids`` (array ids are expanded): id -> {State, NodeList,
    Reason}; None when squeue cannot be asked. A job absent from the answer has left the queue
    (finished more than MinJobAge ago)."""
    command = ["squeue", "--states=all", "--array", "--noheader", "--format=%i|%T|%N|%r"]
    try:
        done = subprocess.run(
            [*command, f"--jobs={','.join(job_ids)}"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return {}  # every one of them has left the queue
        return None
    states = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            states[parts[0]] = {"State": parts[1], "NodeList": parts[2], "Reason": parts[3]}
    return states


def _watcher_class() -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class QueueWatcher(SlurmInfoWatcher):
        """submitit's job watcher, reading ``squeue`` where ``sacct`` has nothing to say."""

        def update(self) -> None:
            pending = sorted(self._registered - self._finished)
            if not pending:
                return
            self._num_calls += 1
            states = queue_states(sorted({x.split("_")[0] for x in pending}))
            if states is not None:
                for job_id in pending:
                    self._info_dict[job_id] = states.get(job_id) or {
                        "State": "LEFT_QUEUE",
                        "Reason": "no longer in squeue",
                    }
            self._last_status_check = time.time()
            for job_id in pending:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return QueueWatcher


# --- the submitting process --------------------------------------------------------------------

_PREPARED = False


def prepare(sweep_dir: str | None) -> None:
    """Set up this (submitting) process for a SLURM sweep into ``sweep_dir``: this code on the
    jobs' PYTHONPATH, job states from squeue when accounting is off, each job's id and log
    printed, and dead jobs recorded instead of aborting the sweep."""
    global _PREPARED
    use_this_code()
    if _PREPARED:
        return
    import submitit
    from submitit.slurm import slurm

    if not accounting_enabled():
        slurm.SlurmJob.watcher = _watcher_class()(delay_s=600)
        print("reprlab: SLURM accounting is off here: job states are read from squeue")
    original = submitit.AutoExecutor.map_array

    def map_array(self: Any, fn: Callable[..., Any], *iterables: Any) -> list[Any]:
        jobs = original(self, fn, *iterables)
        for job, args in zip(jobs, zip(*iterables, strict=True), strict=False):
            num = args[2] if len(args) > 2 else "?"
            print(f"sweep job {num}: SLURM job {job.job_id}, log {job.paths.stdout}", flush=True)
            job_dir = Path(sweep_dir) / str(num) if sweep_dir is not None else None
            _guard_results(job, num, list(args[0]) if args else [], job_dir)
        return jobs

    submitit.AutoExecutor.map_array = map_array
    _PREPARED = True


# SLURM end states that mean "stopped from outside; running it again resumes it".
_INTERRUPTED = ("CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE")


def _guard_results(job: Any, num: Any, overrides: list[str], job_dir: Path | None) -> None:
    """Make ``job.results()`` record why a job died without a result (and return an empty Hydra
    JobReturn) instead of raising out of the launcher and losing the whole sweep."""
    original = job.results

    def results() -> list[Any]:
        try:
            return original()
        except Exception as err:
            from hydra.core.utils import JobReturn, JobStatus

            state, reason = _final_state(job)
            why = f" ({reason})" if reason.lower() not in ("none", "") else ""
            error = f"SLURM job {job.job_id} ended {state}{why} without a result"
            if "has not produced any output" not in str(err) and "UncompletedJobError" not in (
                type(err).__name__
            ):
                error += f": {str(err).strip().splitlines()[-1] if str(err).strip() else err}"
            if job_dir is not None:
                _record_death(job_dir, num, overrides, state, error)
            # Like a job that failed inside (reprlab records it and returns): the sweep goes
            # on, and the summary and the exit code come from the failure record.
            ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
            ret.return_value = None
            return [ret]

    job.results = results


def _final_state(job: Any) -> tuple[str, str]:
    states = queue_states([str(job.job_id).split("_")[0]]) or {}
    info = states.get(str(job.job_id)) or {}
    if not info:
        with contextlib.suppress(Exception):
            info = job.get_info(mode="cache") or {}
    return info.get("State", "UNKNOWN").split()[0], info.get("Reason", "none") or "none"


def _record_death(job_dir: Path, num: Any, overrides: list[str], state: str, error: str) -> None:
    """Mark the job's run.json (left ``running`` by a killed process) ``interrupted`` or
    ``failed`` with SLURM's state, and write its failure record for the summary."""
    from reprlab.cli.sweeps import FAILURE_FILE
    from reprlab.io import atomic

    status = "interrupted" if state.startswith(_INTERRUPTED) else "failed"
    run_json = job_dir / "run.json"
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(run_json.read_text())
        if isinstance(record, dict):
            if record.get("status") in (None, "running"):
                record["status"] = status
                record["error"] = error
            else:
                record["error"] = f"{record.get('error') or record['status']}; {error}"
            record["slurm"] = {"state": state, "status": status}
            atomic.write_text(run_json, json.dumps(record, indent=2) + "\n")
    with contextlib.suppress(OSError, TypeError, ValueError):
        failure = {"num": int(num), "overrides": overrides, "error": f"{status}: {error}"}
        atomic.write_text(job_dir / FAILURE_FILE, json.dumps(failure))
