"""Help for ``reprlab run``: the ``--help`` page (groups, options and the chosen analysis's keys
with their comments) and "did you mean" for unknown options, keys, groups and flags.

Nothing here imports torch: help and refusals answer in about a second.
"""

from __future__ import annotations

import difflib
import re
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from reprlab.errors import ReprlabError

HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package",
               "-p", "--run", "-r", "--multirun", "-m", "--shell-completion", "-sc",
               "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--info",
               "-i", "--experimental-rerun")  # fmt: skip
"""The flags ``reprlab run`` hands to Hydra."""

WIDTH = 120


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean X?"`` naming the closest ``choices`` entry to ``word`` (difflib), or ""."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:  # a typo in a long dotted key: compare the last parts
        tail = word.rsplit(".", 1)[-1]
        by_tail = {c.rsplit(".", 1)[-1]: c for c in choices}
        close = [by_tail[m] for m in difflib.get_close_matches(tail, list(by_tail), n=1)]
    return f"; did you mean {close[0]}?" if close else ""


CFG_CHOICES = ("job", "hydra", "all")


def check_flags(args: Sequence[str]) -> None:
    """Raise ReprlabError (one line, the closest match named) for a flag Hydra does not know, a
    bad ``--cfg`` value, or ``--config-name``/``--config-path`` (reprlab composes its own
    packaged config; ``experiment=`` files and ``--config-dir`` add to it)."""
    for position, arg in enumerate(args):
        flag, _, attached = arg.partition("=")
        if not arg.startswith("-") or _is_number(arg):
            continue
        if flag not in HYDRA_FLAGS:
            raise ReprlabError(
                f"unknown option {flag}{did_you_mean(flag, HYDRA_FLAGS)} "
                "(`reprlab run --help` lists them)"
            )
        if flag in ("--config-name", "-cn", "--config-path", "-cp"):
            raise ReprlabError(
                f"{flag} is not supported: reprlab composes its own config; pin a study in "
                "an experiment file (experiment=NAME) or add a config folder with --config-dir"
            )
        if flag in ("--cfg", "-c"):
            value = attached or (args[position + 1] if position + 1 < len(args) else "")
            if value not in CFG_CHOICES:
                raise ReprlabError(
                    f"--cfg {value or '(nothing)'} is invalid{did_you_mean(value, CFG_CHOICES)} "
                    f"(choose one of: {', '.join(CFG_CHOICES)})"
                )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'")


def explain_override_error(message: str, overrides: Sequence[str], compose: Any) -> str | None:
    """A one-line replacement for Hydra's "Could not override 'k'. To append to your config use
    +k=v" when ``k`` is a typo: names the group or key it probably meant. ``compose(overrides)``
    composes a config (used to list the keys beside ``k``). None when the message is another one.
    """
    from reprlab.run.groups import GROUPS

    found = _NOT_IN_STRUCT.search(message)
    if found is None:
        return None
    key = found.group(1)
    if "." not in key:
        keys = [*GROUPS, *_top_level_keys(overrides, key, compose)]
        return (
            f"unknown group or key '{key}'{did_you_mean(key, keys)} "
            f"(groups: {', '.join(GROUPS)}; `reprlab run --help` lists their options)"
        )
    parent, leaf = key.rsplit(".", 1)
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node = compose(others)
        for part in parent.split("."):
            node = node[part]
        siblings = [str(k) for k in node]
    except Exception:  # the parent itself is unknown, or composes badly: say so plainly
        return f"unknown key '{key}'; check the spelling (`reprlab run --cfg job` prints every key)"
    hint = did_you_mean(leaf, siblings)
    shown = hint.replace("did you mean ", f"did you mean {parent}.") if hint else ""
    listing = "" if shown else f"{parent} has: {', '.join(siblings)}; "
    return f"unknown key '{key}'{shown} ({listing}+{key}=... adds a new key on purpose)"


def _top_level_keys(overrides: Sequence[str], key: str, compose: Any) -> list[str]:
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        return [str(k) for k in compose(others)]
    except Exception:
        return []


def _wrapped(label: str, items: Sequence[str]) -> list[str]:
    return textwrap.wrap(
        ", ".join(items), width=WIDTH, initial_indent=f"  {label:<11}", subsequent_indent=" " * 13
    )


def run_help(overrides: Sequence[str], analysis: str | None) -> str:
    """The ``reprlab run --help`` page: usage, every group's options, then the YAML (comments
    kept) of ``analysis`` (the analysis the given overrides choose)."""
    from reprlab.run.groups import GROUPS, config_dir, group_options

    lines = [
        "usage: reprlab run [-m] [group=option ...] [key=value ...] [--cfg job [--resolve]]",
        "",
        "One experiment on the representations of standard and robust networks; -m sweeps over",
        "comma-separated values (one job each, gathered into summary.csv and report/index.html).",
        "",
        "groups and their options:",
    ]
    for group in GROUPS:
        options = group_options(group) if group != "ref" else ["(any model option)"]
        lines.extend(_wrapped(group, options))
    lines += [
        "",
        "options:",
        "  --cfg job [--resolve]   print the composed config (resolved), run nothing",
        "  --hydra-help            Hydra's own flags    -m, --multirun   sweep",
        "  analysis=NAME --help    that analysis's keys with their comments",
        "",
        "examples:",
        "  reprlab run analysis=evaluate model=cnn_small_at",
        "  reprlab run analysis=cka model=resnet18_at dataset=cifar10",
        "  reprlab run -m analysis=evaluate model=cnn_small,cnn_small_at",
        "  reprlab run analysis=stitching --help",
    ]
    if analysis is not None:
        path = config_dir() / "analysis" / f"{analysis}.yaml"
        if path.is_file():
            lines += ["", f"analysis={analysis}: its keys (set with analysis.KEY=VALUE):", ""]
            lines += ["  " + line for line in path.read_text().rstrip().splitlines()]
    common = config_dir() / "config.yaml"
    if common.is_file():
        text = common.read_text().split("\nhydra:", 1)[0].rstrip()
        body = text.split("\n\n", 1)[-1] if "defaults:" in text else text
        lines += ["", "keys every run shares (config.yaml):", ""]
        lines += ["  " + line for line in body.splitlines()]
    return "\n".join(lines)
