"""Hydra launcher plugins: which are usable here, checked before a sweep submits anything.

``reprlab run -m hydra/launcher=<name> ...`` runs a sweep's jobs through a Hydra launcher plugin
(installed with ``pip install 'reprlab[cluster]'``):

- ``joblib`` (hydra-joblib-launcher): the jobs as parallel local processes (loky), at most
  ``hydra.launcher.n_jobs`` at a time.
- ``submitit_local`` (hydra-submitit-launcher): each job a local process started by submitit.
- ``submitit_slurm`` (hydra-submitit-launcher): each job a SLURM array task; see
  ``conf/hydra/launcher/slurm.yaml`` for partition, GPUs, time and array parallelism.

Jobs that need one model train it once: the first takes the store entry's ``flock`` lock, the
others wait for it and load the result (:mod:`reprlab.io.store`). For SLURM the store must be on a
filesystem every node sees *with cluster-wide flock* (:mod:`reprlab.io.mounts`); where it is not,
the sweep is refused before anything is submitted.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reprlab.errors import ReprlabError
from reprlab.io.mounts import lock_problem, store_mount


@dataclass(frozen=True)
class Launcher:
    """A Hydra launcher plugin: the modules it needs and the package that brings them."""

    name: str
    modules: tuple[str, ...]
    package: str
    multi_node: bool


LAUNCHERS = {
    "joblib": Launcher(
        "joblib", ("hydra_plugins.hydra_joblib_launcher", "joblib"), "hydra-joblib-launcher", False
    ),
    "submitit_local": Launcher(
        "submitit_local",
        ("hydra_plugins.hydra_submitit_launcher", "submitit"),
        "hydra-submitit-launcher",
        False,
    ),
    "submitit_slurm": Launcher(
        "submitit_slurm",
        ("hydra_plugins.hydra_submitit_launcher", "submitit"),
        "hydra-submitit-launcher",
        True,
    ),
}
"""Launchers that need a plugin (Hydra's own ``basic`` launcher runs jobs one after another)."""

SLURM_PRESETS = {"slurm": "submitit_slurm"}
"""reprlab's launcher presets (conf/hydra/launcher/<name>.yaml) and the plugin they extend."""


def chosen_launcher(overrides: Sequence[str]) -> str | None:
    """The ``hydra/launcher=<name>`` a run's overrides pick (None: Hydra's default, basic)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen = None
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group == "hydra/launcher" and not override.is_delete():
            if override.is_sweep_override():
                raise ReprlabError(
                    "hydra/launcher cannot be swept: pick one launcher for the whole sweep"
                )
            chosen = override.get_value_element_as_str()
    return chosen


def missing_module(modules: Sequence[str]) -> str | None:
    """The first of ``modules`` that cannot be imported, or None."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def check_installed(name: str | None) -> Launcher | None:
    """Raise ReprlabError (one line, with the pip command) if launcher ``name`` needs a plugin
    that is not installed; return its :class:`Launcher` (None for Hydra's own launchers)."""
    launcher = LAUNCHERS.get(SLURM_PRESETS.get(name or "", name or ""))
    if launcher is None:
        return None
    missing = missing_module(launcher.modules)
    if missing is not None:
        raise ReprlabError(
            f"hydra/launcher={name} needs the {launcher.package} plugin ({missing} is not "
            f"installed in {sys.prefix}); install it with: pip install 'reprlab[cluster]'"
        )
    return launcher


def check_cluster(
    launcher: Launcher | None,
    stores: Sequence[str],
    *,
    which: Callable[[str], str | None] = shutil.which,
    mountinfo: str | None = None,
    warn: Callable[[str], None] | None = None,
    one_node_here: Callable[[], bool] | None = None,
) -> None:
    """Raise ReprlabError where a multi-node launcher cannot work from here: SLURM's ``sbatch``
    is missing, or its store's lock would not hold across nodes. A store on a filesystem only
    this machine sees is a warning (other nodes would not see it), unless the cluster's only node
    is this machine (``one_node_here``, default: ask ``sinfo``)."""
    if launcher is None or not launcher.multi_node:
        return
    if which("sbatch") is None:
        raise ReprlabError(
            f"hydra/launcher={launcher.name} submits with SLURM's sbatch, which is not on PATH "
            "here: run the sweep from a cluster login node (on this machine use "
            "hydra/launcher=submitit_local or hydra/launcher=joblib)"
        )
    for store in dict.fromkeys(stores):
        mount = store_mount(store, mountinfo)
        if mount is None:
            continue
        problem = lock_problem(mount)
        if problem is not None:
            raise ReprlabError(
                f"the store {store} cannot be shared by SLURM jobs: {problem}, so two nodes "
                "could train one model at once; point paths.store= (or REPRLAB_STORE) at a "
                "filesystem with cluster-wide flock (NFS with lockd or NFSv4, Lustre -o flock, "
                "GPFS, BeeGFS, CephFS)"
            )
        alone = one_node_here or _cluster_is_this_machine
        if mount.local and warn is not None and not alone():
            warn(
                f"the store {store} is on {mount.fstype} at {mount.point}, which only this "
                "machine sees: jobs on other nodes would not find its models; use a shared "
                "filesystem for paths.store unless the cluster is this one machine"
            )


def is_slurm(name: str | None) -> bool:
    """Whether launcher ``name`` (a ``hydra/launcher=`` choice) submits to SLURM."""
    launcher = LAUNCHERS.get(SLURM_PRESETS.get(name or "", name or ""))
    return launcher is not None and launcher.multi_node


def check_job_request(launcher: Launcher | None, cfg: Any) -> None:
    """Raise ReprlabError (one line naming the ``hydra.launcher`` option) when SLURM would refuse
    the sweep's job request (``sbatch --test-only``; :mod:`reprlab.cli.slurm`)."""
    if launcher is None or not launcher.multi_node or cfg is None:
        return
    import copy

    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from reprlab.cli.slurm import check_request

    node = copy.deepcopy(cfg.hydra.launcher)
    try:
        with open_dict(node):
            node.pop("submitit_folder", None)  # names the sweep directory, not resources
        request = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as err:
        raise ReprlabError(f"hydra.launcher: {str(err).splitlines()[0]}") from None
    check_request(request)


def failure_line(err: BaseException, write_failure: Callable[[OSError], str | None]) -> str | None:
    """One line for an error that ends a sweep from outside reprlab's jobs (a write failure,
    sbatch refusing a submission), or None for anything else (a bug: the traceback shows)."""
    if isinstance(err, OSError):
        return write_failure(err)
    from reprlab.cli.slurm import submission_problem

    return submission_problem(err)


def _cluster_is_this_machine() -> bool:
    """Whether SLURM's only node is this machine (a store on a local disk is then shared)."""
    import socket
    import subprocess

    try:
        done = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    nodes = set(done.stdout.split())
    return done.returncode == 0 and nodes == {socket.gethostname().split(".")[0]}
