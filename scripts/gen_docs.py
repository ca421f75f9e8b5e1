"""Write docs/reference.md, the tables of every config group, option, key and experiment,
generated from the config tree itself (reprlab/conf).

    python scripts/gen_docs.py            # rewrite docs/reference.md
    python scripts/gen_docs.py --check    # exit 1 if docs/reference.md is out of date

tests/unit/test_docs.py runs the check, so a config option that is added, removed or re-commented
without regenerating the page fails the tests.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "reprlab" / "conf"
OUT = ROOT / "docs" / "reference.md"

GROUPS = {
    "dataset": "the data (`dataset=`); radii are the customary ones in pixel units",
    "model": "trained-model recipes (`model=`, `ref=`): architecture, training, adversary, seed",
    "attack": "the attack an analysis uses (`attack=`)",
    "analysis": "what a run computes (`analysis=`); its keys are below",
    "pair": "a model and a ref together, for zipped sweeps (`pair=`)",
    "experiment": "a whole study pinned by name (`experiment=`)",
    "logger": "where training curves and summaries are logged (`logger=`)",
    "hydra/launcher": "how a sweep's jobs run (`hydra/launcher=`)",
}
KEY_LINE = re.compile(
    r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<note>.*))?$"
)
CONTINUATION = re.compile(r"^ +#\s?(?P<note>.*)$")


def header(path: Path) -> str:
    """The file's leading comment as one paragraph (command examples dropped)."""
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("# @package"):
            continue
        if not raw.startswith("#"):
            break
        text = raw[1:].strip()
        if text.startswith("reprlab ") or text.startswith("make "):
            continue
        lines.append(text)
    return " ".join(line for line in lines if line)


def keys(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, default, comment) for every key of a YAML config file, in file order.

    Comment lines that continue a key's comment (indented ``#`` lines right after it) are
    joined to it; ``defaults`` lists are skipped.
    """
    rows: list[list[str]] = []
    stack: list[tuple[int, str]] = []
    in_defaults = False
    for raw in path.read_text().splitlines():
        if not raw.strip():
            continue
        cont = CONTINUATION.match(raw)
        if cont and rows and not raw.lstrip().startswith("# ---"):
            rows[-1][2] = f"{rows[-1][2]} {cont['note'].strip()}".strip()
            continue
        if raw.lstrip().startswith("#"):
            continue
        if in_defaults and raw.startswith((" ", "-")):
            continue
        in_defaults = False
        match = KEY_LINE.match(raw)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([*(name for _, name in stack), match["key"]])
        value = match["value"].strip()
        if key == "defaults":
            in_defaults = True
            continue
        if not value:
            stack.append((indent, match["key"]))
        rows.append([key, value, (match["note"] or "").strip()])
    return [(k, v, n) for k, v, n in rows]


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[tuple[str, str, str]]) -> list[str]:
    out = ["| key | default | meaning |", "|---|---|---|"]
    out += [
        f"| `{k}` | `{cell(v)}` | {cell(n)} |" if v else f"| `{k}` | | {cell(n)} |"
        for k, v, n in rows
    ]
    return out


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `reprlab/conf` by `python scripts/gen_docs.py`; do not edit by hand "
        "(`tests/unit/test_docs.py` fails when this page and the configs disagree).",
        "",
        "## Config groups",
        "",
        "| group | options | what it is |",
        "|---|---|---|",
    ]
    for group, what in GROUPS.items():
        directory = CONF / group
        if not directory.is_dir():
            continue
        options = ", ".join(f"`{p.stem}`" for p in sorted(directory.glob("*.yaml")))
        lines.append(f"| `{group}` | {options} | {what} |")
    lines += ["", "## Run-wide keys (`conf/config.yaml`)", ""]
    top = [row for row in keys(CONF / "config.yaml") if not row[0].startswith("hydra")]
    lines += table(top)
    for group, title in (
        ("dataset", "Datasets"),
        ("model", "Model recipes"),
        ("attack", "Attacks"),
        ("pair", "Pairs"),
        ("experiment", "Experiments"),
        ("logger", "Loggers"),
        ("hydra/launcher", "Launchers"),
    ):
        directory = CONF / group
        if not directory.is_dir():
            continue
        lines += ["", f"## {title} (`{group}=`)", "", "| option | what it is |", "|---|---|"]
        for path in sorted(directory.glob("*.yaml")):
            lines.append(f"| `{path.stem}` | {cell(header(path))} |")
    lines += ["", "## Analyses (`analysis=`)", ""]
    lines.append(
        "Every key below is set on the command line as `analysis.<key>=<value>`; "
        "`reprlab run analysis=<name> --help` prints the same."
    )
    for path in sorted((CONF / "analysis").glob("*.yaml")):
        lines += ["", f"### `{path.stem}`", "", header(path), ""]
        lines += table(keys(path))
    lines += ["", "## Attack keys (`attack.<key>=`)", ""]
    seen: dict[str, tuple[str, str, str]] = {}
    for path in sorted((CONF / "attack").glob("*.yaml")):
        for key, value, note in keys(path):
            seen.setdefault(key, (key, value, note))
    lines += table(list(seen.values()))
    lines += ["", "## Recipe keys (`model.<key>=`, `ref.<key>=`)", ""]
    seen = {}
    for path in sorted((CONF / "model").glob("*.yaml")):
        for key, value, note in keys(path):
            if note or key not in seen:
                seen[key] = (key, value if key not in seen else seen[key][1], note)
    lines += table(list(seen.values()))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
