"""Fuzzing the command line: random overrides of every group's fields with values of the wrong
type, range or form.

Every case must end with exit 0 or exit 2 and one line, never a traceback, and leave nothing
behind when it exits 2. Most cases run in-process through the checks ``reprlab run`` makes
before Hydra starts (:func:`reprlab.cli.run.preflight`): each either raises a one-line ReprlabError
or passes, and a passing one must then survive what a run does first (seeding, building the
models, their optimisers and adversaries, the loaders, the attack, the analysis settings). A few
refused cases also run as real processes: exit 2, one stderr line, the same message, nothing
written.

Counts of cases tried print at the end of the module (``pytest -s``).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import reprlab_env
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from reprlab.analyses import RUNNERS, get_analysis
from reprlab.cli.run import compose_config, preflight
from reprlab.core.fit import make_optimizer
from reprlab.data import dataset_info, make_loader
from reprlab.errors import ReprlabError
from reprlab.run.config import attack_spec, dataset_spec, recipe, run_settings
from reprlab.run.recipes import build_for, make_attack, train_settings
from reprlab.runtime import resolve_device, seed_everything

IN_PROCESS_CASES = int(os.environ.get("REPRLAB_FUZZ_CASES", "40"))
PROCESS_CASES = int(os.environ.get("REPRLAB_FUZZ_PROCESSES", "3"))

BASE = ["dataset=synthetic", "progress=false", "monitor.examples=50", "monitor.batch_size=50"]
MODELS = ("cnn_small", "cnn_small_at", "cnn")
COUNTS: Counter[str] = Counter()


def leaf_keys(node: DictConfig, prefix: str) -> list[str]:
    keys = []
    for key in node:
        value = node._get_node(key)
        name = f"{prefix}.{key}" if prefix else str(key)
        keys.extend(leaf_keys(value, name) if isinstance(value, DictConfig) else [name])
    return keys


def group_fields() -> dict[str, list[str]]:
    """Every field of every group, read from the composed configs: top level, dataset,
    model/ref (with an adversary), attack, and each analysis's own keys."""
    cfg = compose_config(["model=cnn_small_at", "ref=cnn_small_at", "dataset=synthetic"])
    fields = {
        group: leaf_keys(cfg[group], group) for group in ("dataset", "model", "ref", "attack")
    }
    fields["top"] = [
        key
        for key in leaf_keys(cfg, "")
        if key.split(".")[0] not in ("dataset", "model", "ref", "attack", "analysis")
    ]
    for name in RUNNERS:
        fields[f"analysis:{name}"] = leaf_keys(
            compose_config([f"analysis={name}"]).analysis, "analysis"
        )
    return fields


FIELDS = group_fields()
ALL_KEYS = sorted({key for keys in FIELDS.values() for key in keys})

# Wrong type, range or form; a few right ones too, so that accepted configs get exercised.
VALUES = [
    "abc", "''", "' '", "null", "true", "false", "[]", "[[]]", "{}", "{a: 1}", "[1,abc]",
    "-1", "0", "1", "2", "1.5", "-0.5", "1e9", "1e-320", "inf", "-inf", "nan", "2147483648",
    "4294967296", "-4294967297", "99999999999999999999", "0x10", "${oops}", "${seed}",
    "${paths.outputs}", "[1, -2]", "[0.5, 2]", "meta", "cuda:7", "cpu:3", "linf", "l2", "blocks",
    "all", "[conv1]", "cnn_small", "sgd", "step", "eval", "'1'",
]  # fmt: skip


def floats_text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(value)


# Plausible values (small counts, fractions, names), so that some combinations pass.
PLAUSIBLE = ["1", "3", "4", "10", "64", "0.01", "0.1", "0.3", "0.9", "[1]", "[0.5]", "[1,2]",
             "true", "false", "null", "cpu", "l2", "linf", "cnn_small", "keep", "all"]  # fmt: skip

# Huge, empty and negative values, drawn for every numeric and list field: each must be refused
# in one line or accepted and then exercised, within CASE_SECONDS (a hang fails the case).
EXTREME = ["10000000000", "1000000000000", "1e30", "-1e30", "-10000000000", "-1", "[]",
           "[1e30]", "[-1]", "[10000000000]", "[0]"]  # fmt: skip
CASE_SECONDS = 120

values = st.one_of(
    st.sampled_from(VALUES),
    st.sampled_from(EXTREME),
    st.sampled_from(PLAUSIBLE),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(floats_text),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=6),
    st.lists(st.integers(-3, 300), max_size=3).map(lambda xs: f"[{','.join(map(str, xs))}]"),
)


@st.composite
def cases(draw) -> list[str]:
    """Overrides: a base, a random model/analysis (maybe a ref), and 1-3 random fields with
    random values, mostly of that choice's own groups; sometimes deleted instead."""
    analysis = draw(st.sampled_from(sorted(RUNNERS)))
    overrides = [*BASE, f"model={draw(st.sampled_from(MODELS))}", f"analysis={analysis}"]
    with_ref = draw(st.booleans())
    if with_ref:
        overrides.append(f"ref={draw(st.sampled_from(MODELS))}")
    own = FIELDS["top"] + FIELDS["dataset"] + FIELDS["model"] + FIELDS["attack"]
    own += FIELDS[f"analysis:{analysis}"] + (FIELDS["ref"] if with_ref else [])
    # One case in three draws plausible values only, so that many pass and get exercised.
    drawn = st.sampled_from(PLAUSIBLE) if draw(st.integers(0, 2)) == 0 else values
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(own) | st.sampled_from(ALL_KEYS))
        if draw(st.integers(0, 9)) == 0:
            overrides.append(f"~{key}")
        else:
            overrides.append(f"{key}={draw(drawn)}")
    return overrides


@contextmanager
def inside(directory: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def exercise(overrides: list[str]) -> None:
    """What a run does first, short of training: everything an accepted config feeds."""
    cfg = compose_config(overrides)
    top = run_settings(cfg)
    seed_everything(top.seed)
    device = resolve_device(top.device)
    dataset = dataset_spec(cfg.dataset)
    info = dataset_info(dataset.name)
    for where in ("model", "ref"):
        if cfg.get(where) is None:
            continue
        spec = recipe(cfg[where], where)
        model = build_for(spec, info)
        make_optimizer(model.parameters(), train_settings(spec))
        loader = make_loader(
            dataset.name, dataset.root, "train", batch_size=spec.train.batch_size, train=True,
            seed=spec.seed, device=device, limit=dataset.train_limit,
        )  # fmt: skip
        assert len(loader) > 0
        x, _ = next(iter(loader.epoch(0)))
        assert len(x) == spec.train.batch_size
    make_attack(attack_spec(cfg.attack))
    monitor = make_loader(
        dataset.name, dataset.root, "test", batch_size=top.monitor.batch_size, train=False,
        seed=top.seed, device=device, limit=top.monitor.examples,
    )  # fmt: skip
    assert len(monitor) > 0
    get_analysis(cfg.analysis.name).settings(cfg)


def check_in_process(overrides: list[str]) -> str | None:
    """The one-line error ``reprlab run`` would print, or None when it accepts the config."""
    try:
        preflight(overrides, multirun=False)
    except ReprlabError as err:
        message = str(err)
        assert message and "\n" not in message, message
        return message
    return None


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(
        f"\nfuzz: {COUNTS['in_process']} cases in-process ({COUNTS['accepted']} accepted and "
        f"exercised, {COUNTS['refused']} refused with one line); {COUNTS['process']} cases as "
        "real processes (exit 2, one line, nothing written)"
    )


def test_fields_cover_every_group() -> None:
    assert {"seed", "progress", "num_workers", "device", "monitor.examples", "paths.store"} <= set(
        FIELDS["top"]
    )
    assert "model.adversary.eps" in FIELDS["model"] and "ref.train.lr" in FIELDS["ref"]
    assert "attack.steps" in FIELDS["attack"] and "dataset.train_limit" in FIELDS["dataset"]
    assert (
        "analysis.taps" in FIELDS["analysis:cka"] and "analysis.eps" in FIELDS["analysis:evaluate"]
    )


NUMERIC_OR_LIST = sorted(
    key
    for key in ALL_KEYS
    if not key.startswith(("paths.", "hydra."))
    and key.split(".")[0] in ("model", "attack", "dataset", "monitor", "seed", "num_workers")
)


@st.composite
def extreme_cases(draw) -> list[str]:
    """One field of the model, attack, dataset or run settings set to a huge, empty or negative
    value (the analysis, too, for its own fields)."""
    analysis = draw(st.sampled_from(sorted(RUNNERS)))
    keys = NUMERIC_OR_LIST + FIELDS[f"analysis:{analysis}"]
    key = draw(st.sampled_from(keys))
    return [
        *BASE,
        "model=cnn_small_at",
        f"analysis={analysis}",
        f"{key}={draw(st.sampled_from(EXTREME))}",
    ]


@settings(
    max_examples=IN_PROCESS_CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(overrides=extreme_cases())
def test_huge_empty_and_negative_values(tmp_path_factory, overrides: list[str]) -> None:
    check_case(tmp_path_factory, overrides)


@settings(
    max_examples=IN_PROCESS_CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(overrides=cases())
def test_random_overrides_in_process(tmp_path_factory, overrides: list[str]) -> None:
    check_case(tmp_path_factory, overrides)


@contextmanager
def time_limit(seconds: float, what: object) -> Iterator[None]:
    """Fail (TimeoutError) when the block runs longer than ``seconds``: a case that hangs."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_case(tmp_path_factory, overrides: list[str]) -> None:
    scratch = tmp_path_factory.mktemp("fuzz")
    with inside(scratch), time_limit(CASE_SECONDS, overrides):
        COUNTS["in_process"] += 1
        message = check_in_process(overrides)
        if message is None:
            COUNTS["accepted"] += 1
            exercise(overrides)
        else:
            COUNTS["refused"] += 1
    assert list(scratch.iterdir()) == [], "the checks wrote something"


@settings(
    max_examples=PROCESS_CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(overrides=cases())
def test_random_refused_overrides_as_real_processes(tmp_path_factory, overrides: list[str]) -> None:
    message = check_in_process(overrides)
    assume(message is not None)  # accepted configs would train: the in-process test covers them
    scratch = tmp_path_factory.mktemp("fuzz_process")
    result = subprocess.run(
        [sys.executable, "-m", "reprlab", "run", *overrides],
        cwd=scratch,
        env=reprlab_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    COUNTS["process"] += 1
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"reprlab: error: {message}"]
    assert "Traceback" not in result.stdout
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, database=None)
@given(overrides=cases())
def test_many_more_random_overrides(tmp_path_factory, overrides: list[str]) -> None:
    check_case(tmp_path_factory, overrides)
