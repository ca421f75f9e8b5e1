"""``analysis=findings_report``: assemble the findings study's report from its run directories.

Reads the latest completed run of each findings study under ``analysis.runs`` (``<runs>/<study>/
<stamp>/``, one job per sweep subdirectory: what ``experiment=findings_*`` writes), takes the
numbers every pre-registered criterion needs, asks :mod:`reprlab.methods.findings` for the
verdicts and writes ``findings.md`` (per claim: the paper's words, the criterion, the numbers, the
verdict, the figure), ``findings.json`` and copies of the figures into its own run directory. It
trains and loads nothing; a study that has not run gives "not measured".
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab.errors import ReprlabError
from reprlab.io.html import write_site
from reprlab.methods import findings as criteria
from reprlab.run.config import typed
from reprlab.run.context import RunContext

STUDIES = (
    "train",
    "evaluate",
    "cka",
    "cka_epochs",
    "stitching",
    "stitching_cross",
    "stir",
    "inversion",
    "vulnerability",
)


@dataclass
class Settings:
    name: str
    runs: str  # the findings run root: <runs>/<study>/<stamp>/[<job>/]


def settings(cfg: DictConfig) -> Settings:
    return typed(cfg.analysis, Settings, "analysis")


def check_data(cfg: DictConfig) -> None:
    """The findings runs must exist before a report is written."""
    root = Path(settings(cfg).runs)
    if not any((root / study).is_dir() for study in STUDIES):
        raise ReprlabError(
            f"no findings runs under {root}; run `make findings` (or reprlab run -m "
            "experiment=findings_<study>) first, or point analysis.runs at them"
        )


# --- reading run directories -------------------------------------------------------------------


def _completed(job: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((job / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "completed" else None


def latest_jobs(root: Path, study: str) -> list[tuple[Path, dict[str, Any]]]:
    """The completed jobs (directory, run.json) of the latest run of ``study`` that has any."""
    base = root / study
    if not base.is_dir():
        return []
    for stamp in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
        jobs = (
            [stamp]
            if (stamp / "run.json").exists()
            else sorted((p for p in stamp.iterdir() if p.is_dir()), key=lambda p: p.name)
        )
        done = [(job, rec) for job in jobs if (rec := _completed(job)) is not None]
        if done:
            return done
    return []


def override(record: dict[str, Any], key: str, default: str | None = None) -> str | None:
    """The value of ``key=...`` among a run's command-line overrides."""
    for item in record.get("overrides", []):
        name, _, value = str(item).partition("=")
        if name.lstrip("+~") == key:
            return value
    return default


def _matrix(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, index_col=0)


# --- per study: the numbers ----------------------------------------------------------------------


def _model_of(record: dict[str, Any]) -> tuple[str, int]:
    return override(record, "model", "?") or "?", int(override(record, "model.seed", "0") or 0)


def _monitor_robust(summary: dict[str, Any]) -> float:
    """The last epoch's robust accuracy at the recipe's own threat: validation split if any,
    else the monitor's PGD on test images (``eval_pgd<steps>_acc``)."""
    if "val_robust_acc" in summary:
        return float(summary["val_robust_acc"])
    pgd = [v for k, v in summary.items() if k.startswith("eval_pgd") and k.endswith("_acc")]
    return float(pgd[0]) if pgd else math.nan


def models_table(
    train: list[tuple[Path, dict[str, Any]]], evaluate: list[tuple[Path, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One row per trained network: its training run's monitor figures and the evaluate
    study's clean and PGD-10 accuracy at L∞ 0.1."""
    evaluated = {_model_of(rec): rec.get("summary", {}) for _, rec in evaluate}
    rows = []
    for job, rec in train:
        s = rec.get("summary", {})
        rows.append(
            {
                "model": override(rec, "model", "?"),
                "seed": int(override(rec, "model.seed", "0") or 0),
                "adversary": s.get("adversary", "?"),
                "clean": s.get("eval_clean_acc", s.get("val_clean_acc", math.nan)),
                "robust (own threat)": _monitor_robust(s),
                "train minutes": (s.get("train_seconds") or math.nan) / 60,
                "dir": job,
            }
        )
        e = evaluated.get(_model_of(rec), {})
        rows[-1]["clean (1,000)"] = e.get("clean_acc", math.nan)
        rows[-1]["PGD-10 L∞ 0.1"] = e.get("robust_acc", math.nan)
    return sorted(rows, key=lambda r: (r["model"], r["seed"]))


def validation_curve(job: Path) -> list[float]:
    path = job / "metrics.csv"
    if not path.exists():
        return []
    frame = pd.read_csv(path)
    return [float(v) for v in frame["val_robust_acc"]] if "val_robust_acc" in frame else []


PAIRINGS = ("findings_std_std", "findings_std_rob", "findings_rob_std", "findings_rob_rob")


def _partial(v: criteria.Verdict, note: str) -> criteria.Verdict:
    """``v`` with a note that it rests on part of the registered runs."""
    return criteria.Verdict(v.verdict, v.numbers, f"{v.why} (partial: {note})")


def _both_ways(stir_json: dict[str, Any], a: str, b: str) -> list[float]:
    """STIR(b | a) and STIR(a | b) from a model-set run's stir.json (row: the IRIs' model)."""
    labels, stir = stir_json["models"], stir_json["stir_matrix"]
    i, j = labels.index(a), labels.index(b)
    return [float(stir[i][j]), float(stir[j][i])]


@dataclass
class Gathered:
    """Every verdict's inputs and the figures to show, as read from the runs."""

    verdicts: dict[str, criteria.Verdict]
    figures: dict[str, list[Path]]
    models: list[dict[str, Any]]
    minutes: dict[str, float]
    jobs: list[Path]  # the run directories the verdicts were read from


def gather(root: Path) -> Gathered:
    jobs = {study: latest_jobs(root, study) for study in STUDIES}
    figures: dict[str, list[Path]] = {}
    verdicts: dict[str, criteria.Verdict] = {}
    minutes = {
        study: sum(rec.get("timings", {}).get("total_seconds", 0.0) for _, rec in js) / 60
        for study, js in jobs.items()
        if js
    }
    models = models_table(jobs["train"], jobs["evaluate"])

    # Cianfarani et al.: (a)-(c) from the panels, (d) from epochs + validation curves.
    far, blocks, same = {"robust": [], "standard": []}, {"robust": [], "standard": []}, []
    for job, rec in jobs["cka"]:
        s = rec["summary"]
        rob, std = _matrix(job / f"cka_{s['model']}.csv"), _matrix(job / f"cka_{s['ref']}.csv")
        gap = math.ceil(len(rob) / 3)
        far["robust"].append(criteria.far_pair_mean(rob.to_numpy(), gap))
        far["standard"].append(criteria.far_pair_mean(std.to_numpy(), gap))
        blocks["robust"].append(criteria.block_score(rob.to_numpy()))
        blocks["standard"].append(criteria.block_score(std.to_numpy()))
        if (job / "same_layer.csv").exists():
            same.append(pd.read_csv(job / "same_layer.csv")["cka"].tolist())
        figures.setdefault("cka", []).append(job / "cka_panels.png")
        figures.setdefault("same_layer", []).append(job / "same_layer.png")
    verdicts["a"] = criteria.specialisation(far["robust"], far["standard"])
    verdicts["b"] = criteria.block_structure(blocks["robust"], blocks["standard"])
    verdicts["c"] = criteria.same_layer_fall(same)
    if 0 < len(jobs["cka"]) < 2:
        for cid in "abc":
            verdicts[cid] = _partial(verdicts[cid], "one seed pair of two ran")

    curves_by_seed = {
        r["seed"]: validation_curve(r["dir"]) for r in models if r["model"] == "findings_at"
    }
    curves, to_final = [], []
    for job, rec in jobs["cka_epochs"]:
        seed = int(override(rec, "model.seed", "0") or 0)
        table = _matrix(job / "cka_to_final.csv")
        per_epoch = {
            int(str(label).split()[1]): row.to_numpy(dtype=float) for label, row in table.iterrows()
        }
        curves.append(curves_by_seed.get(seed, []))
        to_final.append(per_epoch)
        figures.setdefault("cka_epochs", []).append(job / "cka_to_final.png")
    for r in models:
        if r["model"] == "findings_at":
            figures.setdefault("cka_epochs", []).append(r["dir"] / "training_curves.png")
    verdicts["d"] = (
        criteria.overfitting_depth(curves, to_final)
        if curves and all(curves)
        else criteria.Verdict(criteria.NOT_MEASURED, why="no validation curve or CKA across epochs")
    )
    if len(curves) == 1:
        verdicts["d"] = _partial(verdicts["d"], "one robust model of two ran")

    # Balogh & Jelasity: (e), (f), (g).
    relative, rob_std = {}, None
    for job, rec in jobs["stitching"]:
        pairing = override(rec, "pair", "?")
        table = pd.read_csv(job / "stitching.csv")
        relative[pairing] = table["relative_acc"].tolist()
        if pairing == "findings_rob_std":
            rob_std = (table["robust_acc"].tolist(), rec["summary"]["front_robust_acc"])
        figures.setdefault("stitching", []).append(job / "stitching.png")
    verdicts["e"] = criteria.stitch_clean(relative)
    if relative and len(relative) < len(PAIRINGS):
        verdicts["e"] = criteria.Verdict(
            criteria.NOT_MEASURED,
            verdicts["e"].numbers,
            f"{len(relative)} of the {len(PAIRINGS)} pairings ran",
        )
    verdicts["f"] = (
        criteria.stitch_robust_shape(*rob_std)
        if rob_std
        else criteria.Verdict(criteria.NOT_MEASURED, why="no findings_rob_std stitching run")
    )
    cross = jobs["stitching_cross"]
    if cross:
        job, rec = cross[0]
        table = pd.read_csv(job / "stitching.csv")
        verdicts["g"] = criteria.stitch_robust_shape(
            table["robust_acc"].tolist(), rec["summary"]["front_robust_acc"]
        )
        figures.setdefault("stitching_cross", []).append(job / "stitching.png")
    else:
        verdicts["g"] = criteria.Verdict(criteria.NOT_MEASURED, why="no cross-task stitching run")

    # Nanda et al.: (h).
    verdicts["h"] = criteria.Verdict(criteria.NOT_MEASURED, why="no STIR run")
    for job, _ in jobs["stir"][:1]:
        out = json.loads((job / "stir.json").read_text())
        std = _both_ways(out, "findings_std", "findings_std_s1")
        rob = _both_ways(out, "findings_at_l2", "findings_at_l2_s1")
        i, j = out["models"].index("findings_std"), out["models"].index("findings_std_s1")
        verdicts["h"] = criteria.stir_gap(rob, std, out["cka_matrix"][i][j])
        verdicts["h"].numbers.update(
            {
                "robust pair STIR": " / ".join(f"{v:.3f}" for v in rob),
                "standard pair STIR": " / ".join(f"{v:.3f}" for v in std),
                "fake_relu": str(out.get("fake_relu", "?")),
            }
        )
        figures.setdefault("stir", []).append(job / "stir_matrix.png")

    # Engstrom et al.: (i), (j).
    verdicts["i"] = criteria.Verdict(criteria.NOT_MEASURED, why="no inversion run")
    verdicts["j"] = criteria.Verdict(criteria.NOT_MEASURED, why="no Fig. 4 run")
    for job, _ in jobs["inversion"][:1]:
        out = json.loads((job / "inversion_summary.json").read_text())
        rob_label, std_label = "findings_at_l2", "findings_std"
        if "inversion" in out:
            m = out["inversion"]["models"]
            rob, std = m[rob_label]["test"], m[std_label]["test"]
            verdicts["i"] = criteria.closer_inversions(
                rob["median_pixel_l2"],
                std["median_pixel_l2"],
                rob["median_ssim"],
                std["median_ssim"],
            )
            figures.setdefault("inversion", []).append(job / "inversion_grid.png")
        if "repr_distance" in out:
            d = out["repr_distance"]["median_rel_distance"]
            eps = [float(e) for e in out["repr_distance"]["eps"]]
            verdicts["j"] = criteria.fig4_gap(
                eps,
                [d[std_label][f"{e:g}"] for e in eps],
                [d[rob_label][f"{e:g}"] for e in eps],
            )
            figures.setdefault("fig4", []).append(job / "repr_distance_curve.png")

    # Zhu et al.: (k), (l).
    verdicts["k"] = criteria.Verdict(criteria.NOT_MEASURED, why="no vulnerability run")
    verdicts["l"] = verdicts["k"]
    for job, _ in jobs["vulnerability"][:1]:
        rows = pd.read_csv(job / "vulnerability.csv")
        rv = {r.adversary != "standard": float(r.rv) for r in rows.itertuples()}
        verdicts["k"] = criteria.less_vulnerable(rv.get(True, math.nan), rv.get(False, math.nan))
        bounds = {str(r.model): float(r.adversarial_bound) for r in rows.itertuples()}
        heads = []
        if (job / "heads.csv").exists():
            h = pd.read_csv(job / "heads.csv")
            heads = [
                (str(r.model), f"{r.head}/{r.training}", float(r.adversarial_acc))
                for r in h.itertuples()
            ]
        verdicts["l"] = criteria.bound_holds(bounds, heads)
        figures.setdefault("vulnerability", []).append(job / "bound_vs_accuracy.png")

    used = [job for js in jobs.values() for job, _ in js]
    return Gathered(verdicts, figures, models, minutes, used)


# --- the report ----------------------------------------------------------------------------------

CLAIMS: dict[str, tuple[str, str, str, str]] = {
    # id: (paper, the paper's words, the pre-registered criterion, figure key)
    "a": (
        "Cianfarani et al. 2022",
        "robust networks lack specialisation: distant layers are more similar",
        "mean CKA over tap pairs >= a third of the depth apart: every robust model > every "
        "standard one",
        "cka",
    ),
    "b": (
        "Cianfarani et al. 2022",
        "the block structure of standard networks vanishes in robust ones",
        "block score (max over runs of >= 3 taps of within-run minus run-to-rest mean CKA) >= "
        "0.2 for every standard model and < 0.2 for every robust one",
        "cka",
    ),
    "c": (
        "Cianfarani et al. 2022",
        "standard and robust networks grow less similar with depth",
        "same-layer std-robust CKA of the deepest 4 taps >= 0.1 below the shallowest 4, both "
        "seed pairs",
        "same_layer",
    ),
    "d": (
        "Cianfarani et al. 2022",
        "robust overfitting mostly changes the deeper layers",
        "if validation PGD accuracy peaks before the last epoch: CKA(best, final) lower in the "
        "deeper half than the shallower; else not measured",
        "cka_epochs",
    ),
    "e": (
        "Balogh & Jelasity 2023",
        "clean accuracy is compatible at every stitch point",
        "clean relative accuracy >= 0.9 at every point, all four pairings",
        "stitching",
    ),
    "f": (
        "Balogh & Jelasity 2023",
        "robust accuracy of robust-front stitches drops after the first layers and recovers late",
        "robust -> standard: r = stitched / front robust accuracy; r >= 0.7 at the last point "
        "and <= 0.5 somewhere in the middle third",
        "stitching",
    ),
    "g": (
        "Balogh & Jelasity 2023",
        "the same holds across tasks",
        "the rule of (f) for a Fashion-MNIST robust front -> MNIST standard end",
        "stitching_cross",
    ),
    "h": (
        "Nanda et al. 2022",
        "robust models share more invariance (STIR) than standard ones; CKA misses the difference",
        "robust pair's STIR >= 0.1 above the standard pair's, both directions; standard pair's "
        "STIR >= 0.1 below its CKA",
        "stir",
    ),
    "i": (
        "Engstrom et al. 2019",
        "robust representations are approximately invertible",
        "median pixel L2 lower and median SSIM higher for the robust model's inversions",
        "inversion",
    ),
    "j": (
        "Engstrom et al. 2019",
        "Fig. 4: standard representations are reached within small radii, robust ones are not",
        "at some ε: standard median distance < 0.2 and robust > 0.5",
        "fig4",
    ),
    "k": (
        "Zhu, Zhang & Evans 2020",
        "robust representations are less vulnerable",
        "RV(robust) < RV(standard) at the logits",
        "vulnerability",
    ),
    "l": (
        "Zhu, Zhang & Evans 2020",
        "Fano's bound from the worst-case MI limits any downstream classifier",
        "with the whole-image critic, every head's adversarial accuracy <= its model's bound",
        "vulnerability",
    ),
}


def _number(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def render(g: Gathered, copied: dict[str, list[str]], root: Path) -> str:
    lines = [
        "# Findings in miniature: the report",
        "",
        f"Runs read from `{root}`. Design and pre-registered criteria: docs/findings.md.",
        "",
        "| claim | paper | verdict | numbers |",
        "|---|---|---|---|",
    ]
    for cid, (paper, _, _, _) in CLAIMS.items():
        v = g.verdicts[cid]
        main = "; ".join(f"{k} {_number(x)}" for k, x in list(v.numbers.items())[:3])
        lines.append(f"| ({cid}) | {paper} | **{v.verdict}** | {main} |")
    lines += [
        "",
        "## Networks",
        "",
        "| model | seed | training | clean | PGD-10 L∞ 0.1 | monitor: clean, robust (own "
        "threat) | train minutes |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for r in g.models:
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['adversary']} | {_number(r['clean (1,000)'])} | "
            f"{_number(r['PGD-10 L∞ 0.1'])} | {_number(r['clean'])}, "
            f"{_number(r['robust (own threat)'])} | {_number(r['train minutes'])} |"
        )
    if g.minutes:
        lines += [
            "",
            "Run minutes per study (sum over jobs, training included where it happened):",
        ]
        lines.append(", ".join(f"{k} {v:.1f}" for k, v in g.minutes.items()) + ".")
    for cid, (paper, words, criterion, figure) in CLAIMS.items():
        v = g.verdicts[cid]
        lines += [
            "",
            f"## ({cid}) {paper}",
            "",
            f"*The paper:* {words}.",
            "",
            f"*Criterion (pre-registered):* {criterion}.",
            "",
            f"*Verdict:* **{v.verdict}** — {v.why}.",
            "",
        ]
        lines += [f"- {k}: {_number(x)}" for k, x in v.numbers.items()]
        lines += [f"\n![{figure}]({name})" for name in copied.get(figure, [])]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    root = Path(s.runs)
    g = gather(root)
    copied: dict[str, list[str]] = {}
    for key, paths in g.figures.items():
        for k, path in enumerate(paths):
            if path.exists():
                name = f"{key}_{k}_{path.name}"
                shutil.copyfile(path, ctx.run.path / name)
                copied.setdefault(key, []).append(name)
    ctx.run.write_text("findings.md", render(g, copied, root))
    out = {
        "verdicts": {
            cid: {"verdict": v.verdict, "why": v.why, "numbers": v.numbers}
            for cid, v in g.verdicts.items()
        },
        "minutes": g.minutes,
    }
    ctx.run.write_json("findings", out)
    table = pd.DataFrame(
        [
            {"claim": cid, "paper": CLAIMS[cid][0], "the paper's words": CLAIMS[cid][1],
             "verdict": v.verdict, "numbers": v.why}
            for cid, v in g.verdicts.items()
        ]
    )  # fmt: skip
    site = write_site(
        root, table, runs=g.jobs, site=ctx.run.path / "site", title="reprlab findings",
        intro="Each claim's pre-registered criterion, the measured numbers and the verdict are in "
        "findings.md beside this folder; every run the verdicts were read from is linked below.",
    )  # fmt: skip
    print(f"\nFindings report: {ctx.run.path / 'findings.md'}  (HTML: {site})")
    for cid, v in g.verdicts.items():
        print(f"  ({cid}) {CLAIMS[cid][0]:<24} {v.verdict:<14} {v.why}")
    return {cid: v.verdict for cid, v in g.verdicts.items()}
