"""A static HTML report of the runs under a directory: ``<root>/report/index.html`` and one
page per run, self-contained (no server, no network, no script): it opens from the file system.

The index holds the summary table (every run linked to its page), the directory's own figures
(a sweep's accuracy-vs-ε), every run's figures side by side, and the models the runs used, each
linked to the runs that used it. A run page holds its summary, its tables (CSV files), its
figures, its config and its provenance (command, git commit, package versions, store keys,
seeds, device, timings). Figures and files are linked by relative paths, so the report stays
valid when the whole directory is moved or copied.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from reprlab.io import atomic
from reprlab.io.report import read_record
from reprlab.io.tables import format_number, tidy_value

SITE = "report"
"""The report's folder inside the directory it describes."""

MAX_TABLE_ROWS = 200

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 24px 48px; color: #1d1d1f; }
h1 { font-size: 22px; margin: 24px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
.muted { color: #6e6e73; } code, pre { font: 12px/1.4 ui-monospace, Menlo, monospace; }
pre { background: #f5f5f7; padding: 10px 12px; overflow-x: auto; border-radius: 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 12px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e5e5ea; text-align: left;
         white-space: nowrap; }
th { background: #f5f5f7; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr));
           gap: 16px; }
figure { margin: 0; border: 1px solid #e5e5ea; border-radius: 6px; padding: 8px; }
figure img { width: 100%; height: auto; } figcaption { font-size: 12px; color: #6e6e73; }
.status-completed { color: #1a7f37; } .status-failed, .status-stale { color: #cf222e; }
nav a { margin-right: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _link(target: Path, page: Path) -> str:
    """``target`` relative to the folder of ``page``, as a URL path."""
    return Path(os.path.relpath(target, page.parent)).as_posix()


def _number_cell(value: Any) -> str:
    text = format_number(tidy_value(value))
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>"


def table_html(frame: pd.DataFrame, links: dict[int, str] | None = None) -> str:
    """``frame`` as an HTML table; ``links`` maps a row position to the URL its first cell
    links to."""
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    for position, row in enumerate(frame.itertuples(index=False)):
        cells = [_number_cell(v) for v in row]
        if links and position in links and cells:
            cells[0] = f'<td><a href="{_e(links[position])}">{_e(format_number(row[0]))}</a></td>'
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _page(title: str, body: str, nav: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"{nav}{body}</body></html>\n"
    )


def _figures(paths: Sequence[Path], page: Path, captions: Sequence[str] | None = None) -> str:
    if not paths:
        return ""
    items = []
    for index, path in enumerate(paths):
        caption = captions[index] if captions else path.stem
        url = _link(path, page)
        items.append(
            f'<figure><a href="{_e(url)}"><img src="{_e(url)}" alt="{_e(caption)}" '
            f"></a><figcaption>{_e(caption)}</figcaption></figure>"
        )
    return f'<div class="figures">{"".join(items)}</div>'


def _run_dirs(root: Path) -> list[Path]:
    site = root / SITE
    return sorted(
        p.parent for p in root.rglob("run.json") if site not in p.parents and p.parent != site
    )


def _slug(run: Path, root: Path) -> str:
    relative = run.relative_to(root).as_posix()
    return "run" if relative == "." else relative.replace("/", "__")


def _key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th>{_number_cell(v)}</tr>" for k, v in pairs if v not in (None, "", {})
    )
    return f'<div class="scroll"><table>{rows}</table></div>'


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, inner in value.items():
            out += _flat(f"{prefix}.{key}" if prefix else str(key), inner)
        return out
    if isinstance(value, list):
        return [(prefix, ", ".join(map(str, value)))]
    return [(prefix, value)]


def _models(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(role, name, store key) of every model (and stored artifact) a run used."""
    found = []
    for role, entry in (record.get("models") or {}).items():
        if isinstance(entry, dict) and entry.get("key"):
            found.append((str(role), str(entry.get("name", role)), str(entry["key"])))
    for label, entry in (record.get("artifacts") or {}).items():
        if isinstance(entry, dict) and entry.get("key"):
            found.append((str(entry.get("kind", "artifact")), str(label), str(entry["key"])))
    return found


def _run_page(
    run: Path, root: Path, record: dict[str, Any], page: Path, users: dict[str, list[Path]]
) -> str:
    title = f"{record.get('analysis', '?')} · {run.relative_to(root).as_posix()}"
    status = str(record.get("status", "?"))
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted"><span class="status-{_e(status)}">{_e(status)}</span> · started '
        f"{_e(record.get('started', '?'))} · <code>{_e(record.get('command', ''))}</code></p>",
    ]
    if record.get("error"):
        parts.append(f"<h2>Error</h2><pre>{_e(record['error'])}</pre>")
    summary = record.get("summary")
    if isinstance(summary, dict) and summary:
        parts += ["<h2>Summary</h2>", _key_values(_flat("", tidy_value(summary)))]
    figures = sorted(run.glob("*.png"))
    if figures:
        parts += ["<h2>Figures</h2>", _figures(figures, page)]
    tables = sorted(run.glob("*.csv"))
    if tables:
        parts.append("<h2>Tables</h2>")
        for path in tables:
            try:
                frame = pd.read_csv(path)
            except (OSError, ValueError, pd.errors.ParserError):
                continue
            shown = frame.head(MAX_TABLE_ROWS)
            more = (
                f" (first {MAX_TABLE_ROWS} of {len(frame)} rows)" if len(frame) > len(shown) else ""
            )
            parts.append(
                f'<h3><a href="{_e(_link(path, page))}">{_e(path.name)}</a>{_e(more)}</h3>'
                + table_html(shown)
            )
    models = _models(record)
    if models:
        head = ("role", "name", "threat", "store key", "other runs using it")
        parts.append(
            "<h2>Models and artifacts</h2><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head)
            + "</tr>"
        )
        threats = {
            str(e.get("key")): e.get("threat")
            for e in (record.get("models") or {}).values()
            if isinstance(e, dict)
        }
        for role, name, key in models:
            others = [r for r in users.get(key, []) if r != run]
            links = ", ".join(
                f'<a href="{_e(_slug(r, root))}.html">{_e(r.relative_to(root).as_posix())}</a>'
                for r in others
            )
            parts.append(
                f"<tr><td>{_e(role)}</td><td>{_e(name)}</td><td>{_e(threats.get(key) or '–')}</td>"
                f"<td><code>{_e(key)}</code></td>"
                f"<td>{links or '–'}</td></tr>"
            )
        parts.append("</table>")
    config = run / ".hydra" / "config.yaml"
    if config.is_file():
        parts += [
            f'<h2>Config <a class="muted" href="{_e(_link(config, page))}">config.yaml</a></h2>',
            f"<pre>{_e(config.read_text())}</pre>",
        ]
    provenance = [
        ("git commit", (record.get("git") or {}).get("sha")),
        ("uncommitted changes", (record.get("git") or {}).get("dirty")),
        *_flat("seed", record.get("seeds") or {}),
        ("device", record.get("device")),
        ("host", record.get("host")),
        *_flat("version", record.get("versions") or {}),
        *_flat("seconds", record.get("timings") or {}),
        ("finished", record.get("finished")),
    ]
    parts += ["<h2>Provenance</h2>", _key_values(provenance)]
    files = sorted(p for p in run.iterdir() if p.is_file())
    parts.append(
        "<h2>Files</h2><p>"
        + " · ".join(f'<a href="{_e(_link(p, page))}">{_e(p.name)}</a>' for p in files)
        + "</p>"
    )
    nav = '<nav><p><a href="index.html">← all runs</a></p></nav>'
    return _page(title, "".join(parts), nav)


def write_site(
    root: str | Path,
    table: pd.DataFrame,
    *,
    runs: Sequence[Path] | None = None,
    site: str | Path | None = None,
    title: str | None = None,
    intro: str = "",
) -> Path:
    """Write the report of the runs under ``root`` into ``root/report/``; return its
    ``index.html``. ``table`` is the summary table the index shows (one row per run, its
    ``run`` column relative to ``root``, as :func:`reprlab.io.report.gather_runs` gives).

    ``runs`` limits the pages to those run directories (default: every one under ``root``);
    ``site`` writes the report elsewhere (e.g. into a run of its own); ``title`` heads the index
    (default: ``root``'s name) and ``intro`` is a paragraph of text under it."""
    root = Path(root).resolve()
    site = root / SITE if site is None else Path(site).resolve()
    site.mkdir(parents=True, exist_ok=True)
    index = site / "index.html"
    runs = _run_dirs(root) if runs is None else [Path(r).resolve() for r in runs]
    records: dict[Path, dict[str, Any]] = {}
    for run in runs:
        try:
            records[run] = read_record(run / "run.json")
        except ValueError:
            continue
    users: dict[str, list[Path]] = {}
    for run, record in records.items():
        for _, _, key in _models(record):
            users.setdefault(key, []).append(run)
    for run, record in records.items():
        page = site / f"{_slug(run, root)}.html"
        atomic.write_text(page, _run_page(run, root, record, page, users))

    links = {}
    if "run" in table.columns:
        for position, name in enumerate(table["run"].tolist()):
            run = (root / str(name)).resolve()
            if run in records:
                links[position] = f"{_slug(run, root)}.html"
    parts = [
        f"<h1>{_e(title or root.name)}</h1>",
        f"<p>{_e(intro)}</p>" if intro else "",
        f'<p class="muted">{len(records)} runs under <code>{_e(root)}</code></p>',
        "<h2>Runs</h2>" if "run" in table.columns else "",
        table_html(table, links),
    ]
    if "run" not in table.columns:  # the table is not of runs: list them
        rows = "".join(
            f'<li><a href="{_e(_slug(r, root))}.html">{_e(r.relative_to(root).as_posix())}</a></li>'
            for r in records
        )
        parts.append(f"<h2>Runs</h2><ul>{rows}</ul>")
    own = sorted(root.glob("*.png"))
    if own:
        parts += ["<h2>Across runs</h2>", _figures(own, index)]
    figures, captions = [], []
    for run in records:
        for path in sorted(run.glob("*.png")):
            figures.append(path)
            captions.append(f"{run.relative_to(root).as_posix()} · {path.stem}")
    if figures:
        parts += ["<h2>Figures, side by side</h2>", _figures(figures, index, captions)]
    if users:
        rows = []
        for key, used_by in sorted(users.items()):
            name = next(n for r in used_by for _, n, k in _models(records[r]) if k == key)
            links_html = ", ".join(
                f'<a href="{_e(_slug(r, root))}.html">{_e(r.relative_to(root).as_posix())}</a>'
                for r in used_by
            )
            rows.append(
                f"<tr><td>{_e(name)}</td><td><code>{_e(key)}</code></td><td>{links_html}</td></tr>"
            )
        parts.append(
            "<h2>Models and artifacts</h2><table><tr><th>name</th><th>store key</th>"
            f"<th>runs</th></tr>{''.join(rows)}</table>"
        )
    atomic.write_text(index, _page(f"reprlab report · {title or root.name}", "".join(parts)))
    return index
