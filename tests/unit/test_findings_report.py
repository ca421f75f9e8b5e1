"""The findings report's reading of run directories (reprlab.analyses.findings_report.gather):
a runs tree written by hand in the studies' formats, with numbers chosen so that every verdict is
known, gives those verdicts; an older or unfinished run is never the one read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from reprlab.analyses.findings_report import CLAIMS, gather, latest_jobs, render
from reprlab.methods import findings as f

TAPS = ["stem", *(f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)), "pool", "logits"]
POINTS = TAPS[:-1]


def job(root: Path, study: str, stamp: str, overrides: list[str], summary: dict, sub: str = "0"):
    path = root / study / stamp / sub
    path.mkdir(parents=True)
    record = {"status": "completed", "overrides": overrides, "summary": summary}
    record["timings"] = {"total_seconds": 60.0}
    (path / "run.json").write_text(json.dumps(record))
    return path


def square(values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(values, index=TAPS, columns=TAPS)


def smooth(rate: float) -> np.ndarray:
    """CKA falling with tap distance at ``rate``: no block."""
    i, j = np.indices((12, 12))
    return np.exp(-rate * np.abs(i - j))


def blocks() -> np.ndarray:
    m = np.full((12, 12), 0.2)
    m[6:11, 6:11] = 0.9
    np.fill_diagonal(m, 1.0)
    return m


def write_runs(root: Path) -> None:
    for seed in (0, 1):
        for model, adversary, curve in (
            ("findings_std", "standard", None),
            ("findings_at", "linf 0.1 x3", [0.50, 0.56, 0.53]),
        ):
            summary = {"adversary": adversary, "eval_clean_acc": 0.8, "train_seconds": 600}
            if curve:
                summary["val_robust_acc"] = curve[-1]
            else:
                summary["eval_pgd5_acc"] = 0.01
            path = job(root, "train", "2026-01-01_00-00-00_a", [f"model={model}",
                       f"model.seed={seed}"], summary, sub=f"{model}{seed}")  # fmt: skip
            if curve:
                pd.DataFrame({"epoch": [1, 2, 3], "val_robust_acc": curve}).to_csv(
                    path / "metrics.csv", index=False
                )
        ev = {"clean_acc": 0.85, "robust_acc": 0.6}
        job(root, "evaluate", "s", ["model=findings_at", f"model.seed={seed}"], ev, sub=str(seed))
        # CKA panels: robust smooth and alike far apart, standard with a block.
        path = job(root, "cka", "s", [f"pair=findings_cka_s{seed}"],
                   {"model": "findings_at", "ref": "findings_std"}, sub=str(seed))  # fmt: skip
        square(smooth(0.02)).to_csv(path / "cka_findings_at.csv")
        square(blocks()).to_csv(path / "cka_findings_std.csv")
        pd.DataFrame({"tap": TAPS, "cka": np.linspace(0.95, 0.3, 12)}).to_csv(
            path / "same_layer.csv", index=False
        )
        # CKA to the final epoch: the deeper half moved more.
        path = job(root, "cka_epochs", "s", [f"model.seed={seed}"], {}, sub=str(seed))
        rows = [np.r_[np.full(6, 0.95), np.full(6, 0.7)]] * 2
        pd.DataFrame(rows, index=["epoch 1", "epoch 2"], columns=TAPS).to_csv(
            path / "cka_to_final.csv"
        )
    for pairing in ("findings_std_std", "findings_std_rob", "findings_rob_std", "findings_rob_rob"):
        path = job(root, "stitching", "s", [f"pair={pairing}"], {"front_robust_acc": 0.6},
                   sub=pairing)  # fmt: skip
        robust = [0.5, 0.45, 0.3, 0.1, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45, 0.48]
        pd.DataFrame({"point": POINTS, "relative_acc": 0.95, "robust_acc": robust}).to_csv(
            path / "stitching.csv", index=False
        )
    path = job(root, "stitching_cross", "s", [], {"front_robust_acc": 0.6})
    pd.DataFrame({"point": POINTS, "relative_acc": 0.95, "robust_acc": 0.55}).to_csv(
        path / "stitching.csv", index=False
    )
    path = job(root, "stir", "s", [], {})
    labels = ["findings_std", "findings_std_s1", "findings_at_l2", "findings_at_l2_s1"]
    stir = [[1, 0.6, 0.5, 0.5], [0.65, 1, 0.5, 0.5], [0.3, 0.3, 1, 0.9], [0.3, 0.3, 0.92, 1]]
    cka = [[1, 0.95, 0.5, 0.5], [0.95, 1, 0.5, 0.5], [0.5, 0.5, 1, 0.9], [0.5, 0.5, 0.9, 1]]
    payload = {"models": labels, "stir_matrix": stir, "cka_matrix": cka, "fake_relu": {}}
    (path / "stir.json").write_text(json.dumps(payload))
    path = job(root, "inversion", "s", [], {})
    inversion = {
        "inversion": {
            "models": {
                "findings_at_l2": {"test": {"median_pixel_l2": 3.0, "median_ssim": 0.4}},
                "findings_std": {"test": {"median_pixel_l2": 9.0, "median_ssim": 0.1}},
            }
        },
        "repr_distance": {
            "eps": [0.5, 1.0],
            "median_rel_distance": {
                "findings_at_l2": {"0": 1.0, "0.5": 0.9, "1": 0.8},
                "findings_std": {"0": 1.0, "0.5": 0.3, "1": 0.1},
            },
        },
    }
    (path / "inversion_summary.json").write_text(json.dumps(inversion))
    path = job(root, "vulnerability", "s", [], {})
    pd.DataFrame(
        {
            "model": ["findings_std", "findings_at"],
            "adversary": ["standard", "linf 0.1 x3"],
            "tap": "logits",
            "rv": [1.5, 0.8],
            "adversarial_bound": [0.5, 0.9],
        }
    ).to_csv(path / "vulnerability.csv", index=False)
    pd.DataFrame(
        {
            "model": ["findings_std", "findings_at"],
            "head": "linear",
            "training": "adversarial",
            "adversarial_acc": [0.1, 0.95],  # the robust model's head beats its bound
        }
    ).to_csv(path / "heads.csv", index=False)


def test_every_verdict_comes_from_the_runs(tmp_path: Path) -> None:
    write_runs(tmp_path)
    g = gather(tmp_path)
    expected = {
        "a": f.HOLDS,  # robust far-pair CKA (smooth, slow decay) above the block matrix's 0.2
        "b": f.HOLDS,
        "c": f.HOLDS,
        "d": f.HOLDS,  # the curve peaks at epoch 2 and the deeper half moved more
        "e": f.HOLDS,
        "f": f.HOLDS,
        "g": f.FAILS,  # flat at 0.55 / 0.6: no drop
        "h": f.HOLDS,
        "i": f.HOLDS,
        "j": f.HOLDS,  # at ε = 1: standard 0.1, robust 0.8
        "k": f.HOLDS,
        "l": f.FAILS,
    }
    assert {c: v.verdict for c, v in g.verdicts.items()} == expected
    assert g.verdicts["h"].numbers["standard pair CKA"] == 0.95
    assert "findings_at linear/adversarial" in g.verdicts["l"].why
    models = {(r["model"], r["seed"]): r for r in g.models}
    assert len(models) == 4 and models[("findings_at", 1)]["PGD-10 L∞ 0.1"] == 0.6
    assert models[("findings_std", 0)]["robust (own threat)"] == 0.01
    text = render(g, {}, tmp_path)
    assert all(f"## ({c}) " in text for c in CLAIMS)


def test_missing_and_unfinished_runs_are_not_measured(tmp_path: Path) -> None:
    path = job(tmp_path, "vulnerability", "2026-01-02", [], {})
    record = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**record, "status": "running"}))
    assert latest_jobs(tmp_path, "vulnerability") == []
    g = gather(tmp_path)
    assert {v.verdict for v in g.verdicts.values()} == {f.NOT_MEASURED}


def test_the_html_site_links_exactly_the_runs_the_verdicts_came_from(tmp_path: Path) -> None:
    from reprlab.io.html import write_site

    write_runs(tmp_path)
    older = job(tmp_path, "stir", "2025-01-01_00-00-00_old", [], {})  # superseded: not shown
    g = gather(tmp_path)
    table = pd.DataFrame([{"claim": c, "verdict": v.verdict} for c, v in g.verdicts.items()])
    index = write_site(tmp_path, table, runs=g.jobs, site=tmp_path / "out" / "site", title="t")
    pages = sorted(p.name for p in index.parent.glob("*.html") if p.name != "index.html")
    assert len(pages) == len(g.jobs) == len(set(g.jobs))
    text = index.read_text()
    assert "<h1>t</h1>" in text and text.count("<li><a href=") == len(g.jobs)
    assert older.relative_to(tmp_path).as_posix() not in text
    assert not (tmp_path / "report").exists()  # nothing written beside the runs
