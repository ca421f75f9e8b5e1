"""`reprlab report`: columns, sort and formats, and the HTML report opened in a real browser
(headless Chromium from Debian's `chromium` package, driven by playwright)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from reprlab.cli.app import main

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def make_runs(root: Path) -> Path:
    """A sweep of two evaluate runs (run.json, a CSV, a figure, the config) and a train run of
    the model they share, as reprlab writes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = root / "sweep"
    runs = {
        "0": ("evaluate", "cnn_small", "k0", {"clean_acc": 0.9812, "robust_acc": 0.0123}),
        "1": ("evaluate", "cnn_small_at", "k1", {"clean_acc": 0.9645, "robust_acc": 0.7421}),
        "2": ("train", "cnn_small_at", "k1", {"epochs": 2, "eval_clean_acc": 0.9645}),
    }
    for name, (analysis, model, key, summary) in runs.items():
        run = sweep / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"analysis:\n  name: {analysis}\n")
        record = {
            "status": "completed", "analysis": analysis, "command": f"reprlab run model={model}",
            "overrides": [f"model={model}"], "started": "2026-01-01T00:00:00",
            "git": {"sha": "0123abc", "dirty": False}, "versions": {"torch": "2.14.1"},
            "seeds": {"run": 0}, "models": {"model": {"name": model, "key": key}},
            "summary": summary,
        }  # fmt: skip
        (run / "run.json").write_text(json.dumps(record))
        (run / "accuracy.csv").write_text("eps,accuracy\n0.0,0.98\n0.2,0.74\n")
        figure, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 0.2], [0.98, 0.74])
        figure.savefig(run / "accuracy_vs_eps.png")
        plt.close(figure)
    return sweep


def test_report_prints_csv_md_and_table_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_runs(tmp_path)
    before = sorted(p for p in sweep.rglob("*"))
    args = ["report", str(sweep), "--columns", "run,model,*acc*", "--sort=-robust_acc"]
    assert main([*args, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "run,model,clean_acc,robust_acc,eval_clean_acc"
    assert lines[1].startswith("1,cnn_small_at,0.9645,0.7421")
    assert main([*args, "--format", "md"]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| 1 | cnn_small_at | 0.9645 |")
    assert main(["report", str(sweep)]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 120
    assert sorted(p for p in sweep.rglob("*")) == before  # no report.csv copy, nothing written


def test_unknown_report_column_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_runs(tmp_path)
    assert main(["report", str(sweep), "--columns", "robust_ac"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean robust_acc?" in err


def chromium() -> str:
    """The system Chromium; installed from Debian's package where absent (needs root)."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and hasattr(shutil, "chown"):
        import os

        if os.geteuid() == 0:
            subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True,
                           timeout=900, check=False)  # fmt: skip
            found = shutil.which("chromium")
    if found is None:
        pytest.skip("no chromium, and it cannot be installed here (needs root and apt-get)")
    return found


def test_html_report_opens_in_chromium_with_every_figure_and_link(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = chromium()
    sweep = make_runs(tmp_path)
    assert main(["report", str(sweep), "--html"]) == 0
    index = sweep / "report" / "index.html"
    pages = sorted(index.parent.glob("*.html"))
    assert len(pages) == 4  # the index and one page per run

    problems: list[str] = []
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=browser_path,
            args=CHROMIUM_FLAGS,
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        for html in pages:
            page.goto(html.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])"
            )
            assert images or html.name.startswith("run"), f"{html.name} shows no figure"
            for src, complete, width in images:
                assert complete and width > 0, f"{html.name}: figure {src} did not load"
            links = page.eval_on_selector_all("a", "els => els.map(e => e.href)")
            for link in links:
                assert link.startswith("file://"), f"{html.name}: non-local link {link}"
                target = Path(link.removeprefix("file://").split("#")[0])
                assert target.exists(), f"{html.name}: broken link {link}"
            if html == index:
                page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
                text = page.inner_text("body")
                assert "cnn_small_at" in text and "0.7421" in text
        browser.close()
    assert problems == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'report.png'}")
