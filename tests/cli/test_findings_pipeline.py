"""The findings pipeline end to end at a tiny budget: every ``experiment=findings_*`` study runs on
1,200 training images per dataset and a few test images, then ``experiment=findings_report``
writes a report with every claim, a verdict for each and the figures it names. The verdicts at
this budget mean nothing; the structure is what is checked."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import run_reprlab

DATA = Path(os.environ.get("REPRLAB_DATA", "outputs/data")).resolve()
CLAIMS = "abcdefghijkl"
VERDICTS = {"holds", "does not hold", "not measured"}

# Shared by every step: 1,200 training images (findings_at's 1,000-image validation split leaves
# one batch), small monitor, no bars.
COMMON = [
    f"paths.data={DATA}",
    "dataset.train_limit=1200",
    "monitor.examples=64",
    "monitor.attack_steps=1",
    "progress=false",
]
CKA = ["analysis.examples=64", "analysis.batch_size=32"]
STITCH = [
    "analysis.train_examples=256",
    "analysis.ls_examples=128",
    "analysis.examples=64",
    "analysis.eval_batch_size=64",
    "attack.steps=2",
]
STEPS = {
    "findings_train": [],
    "findings_evaluate": ["analysis.examples=64", "attack.steps=2"],
    "findings_cka": CKA,
    "findings_cka_epochs": CKA,
    "findings_stitching": STITCH,
    "findings_stitching_cross": STITCH,
    "findings_stir": [
        "analysis.examples=16",
        "analysis.batch_size=16",
        "analysis.cka_batch_size=16",
        "analysis.steps=5",
        "analysis.grid_images=2",
    ],
    "findings_inversion": [
        "analysis.inversion.examples=4",
        "analysis.inversion.steps=5",
        "analysis.inversion.show=4",
        "analysis.repr_distance.pairs=4",
        "analysis.repr_distance.steps=3",
        "analysis.repr_distance.show=4",
    ],
    "findings_vulnerability": [
        "analysis.train_examples=128",
        "analysis.examples=64",
        "analysis.batch_size=32",
        "analysis.critic_epochs=1",
        "analysis.search_steps=1",
        "analysis.head_epochs=1",
        "analysis.head_attack_steps=1",
        "attack.steps=2",
    ],
}


@pytest.mark.slow
@pytest.mark.skipif(
    not ((DATA / "MNIST").is_dir() and (DATA / "FashionMNIST").is_dir()),
    reason="MNIST and Fashion-MNIST not on disk (REPRLAB_DATA)",
)
def test_the_findings_pipeline_writes_a_report_with_every_claim(tmp_path: Path) -> None:
    for study, overrides in STEPS.items():
        result = run_reprlab("run", "-m", f"experiment={study}", *COMMON, *overrides,
                             cwd=tmp_path, timeout=1800)  # fmt: skip
        assert result.returncode == 0, f"{study}: {result.stderr[-3000:]}"
    result = run_reprlab("run", "experiment=findings_report", *COMMON, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    root = tmp_path / "outputs" / "runs" / "findings"
    assert {p.name for p in root.iterdir()} == {s.removeprefix("findings_") for s in STEPS} | {
        "report"
    }
    (report_dir,) = (root / "report").iterdir()
    text = (report_dir / "findings.md").read_text()
    # The summary table: one row per claim, each with one of the three verdicts.
    rows = re.findall(r"^\| \(([a-l])\) \| [^|]+ \| \*\*([^*]+)\*\* \|", text, flags=re.M)
    assert [cid for cid, _ in rows] == list(CLAIMS)
    assert {verdict for _, verdict in rows} <= VERDICTS
    # One section per claim: the paper's words, the criterion and the verdict.
    for cid in CLAIMS:
        section = text.split(f"## ({cid}) ")[1].split("\n## ")[0]
        for part in ("*The paper:*", "*Criterion (pre-registered):*", "*Verdict:*"):
            assert part in section, (cid, part)
    # Every study ran, so nothing is "not measured" for a missing run (only (d) may lack the
    # overfitting it needs), and every figure the report shows was copied beside it.
    summary = json.loads((report_dir / "findings.json").read_text())
    missing = {c for c, v in summary["verdicts"].items() if v["verdict"] == "not measured"}
    assert missing <= {"d"}, {c: summary["verdicts"][c]["why"] for c in missing}
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(figures) >= 8
    assert all((report_dir / name).is_file() for name in figures)
    # The networks table lists the six Fashion-MNIST models of findings_train.
    assert text.count("| findings_") >= 6
