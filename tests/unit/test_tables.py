"""The one table formatter: 4 significant digits, no float32 noise, at most 120 columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reprlab.io.report import select, to_markdown
from reprlab.io.tables import (
    format_number,
    format_table,
    radius_text,
    round_trip_float32,
    threat_text,
    tidy_floats,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (float(np.float32(0.99)), "0.99"),
        (0.98765432, "0.9877"),
        (12, "12"),
        (3.0, "3"),
        (123456.7, "123457"),
        (2.5e-6, "2.5e-6"),
        (float("nan"), "–"),
        (None, "–"),
        (True, "yes"),
    ],
)
def test_numbers_read_as_people_write_them(value: object, text: str) -> None:
    assert format_number(value) == text


def test_float32_noise_leaves_csv_but_float64_precision_stays() -> None:
    noisy = float(np.float32(0.99))
    assert noisy != 0.99 and round_trip_float32(noisy) == 0.99
    precise = 0.1 + 0.2  # not a float32: kept to the last bit
    assert round_trip_float32(precise) == precise
    csv = tidy_floats(pd.DataFrame({"acc": [noisy, 0.5], "n": [1, 2]})).to_csv(index=False)
    assert csv.splitlines()[1] == "0.99,1"
    assert float(csv.splitlines()[1].split(",")[0]) == pytest.approx(noisy, rel=1e-7)


def test_wide_tables_fit_120_columns_and_keep_every_value() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "run": [f"{i}" for i in range(4)],
            "estimator": ["unbiased HSIC accumulated over minibatches (Nguyen et al. 2021)"] * 4,
            **{f"eval_pgd20_linf_{e}_acc": rng.random(4) for e in range(12)},
        }
    )
    text = format_table(frame, title="Sweep summary")
    assert max(len(line) for line in text.splitlines()) <= 120
    # the shared sentence is printed once, above the table, not in every row
    assert text.count("unbiased HSIC") == 1
    for e in range(12):
        assert f"eval_pgd20_linf_{e}_acc" in text
    assert format_number(frame.iloc[3, 5]) in text


def test_one_row_prints_as_key_value_lines() -> None:
    text = format_table(pd.DataFrame([{"clean_acc": 0.981, "robust_acc": 0.742}]))
    assert text.splitlines() == ["clean_acc   0.981", "robust_acc  0.742"]


@pytest.mark.parametrize(
    ("adversary", "text"),
    [
        (None, "standard"),
        ({"norm": "linf", "eps": 0.2, "method": "pgd_at"}, "PGD-AT L∞ 0.2"),
        (
            {"norm": "linf", "eps": 8 / 255, "method": "trades", "beta": 6.0},
            "TRADES L∞ 8/255 (β=6)",
        ),
        ({"norm": "l2", "eps": 0.5, "method": "mart", "beta": 5.0}, "MART L2 0.5 (λ=5)"),
    ],
)
def test_threats_are_named_as_papers_name_them(adversary: dict | None, text: str) -> None:
    assert threat_text(adversary) == text


def test_radius_on_the_255_grid() -> None:
    assert radius_text(2 / 255, "linf") == "2/255"
    assert radius_text(0.3, "linf") == "0.3"


def test_report_columns_sort_and_markdown() -> None:
    from reprlab.errors import ReprlabError

    frame = pd.DataFrame(
        {"run": ["0", "1", "2"], "model": ["a", "b", "c"], "eval_clean": [0.9, 0.8, 0.95],
         "eval_pgd": [0.1, 0.5, 0.3]}
    )  # fmt: skip
    picked = select(frame, ["model", "eval_*"], ["-eval_pgd"])
    assert list(picked.columns) == ["model", "eval_clean", "eval_pgd"]
    assert picked.model.tolist() == ["b", "c", "a"]
    assert to_markdown(picked).splitlines()[:3] == [
        "| model | eval_clean | eval_pgd |",
        "|---|---|---|",
        "| b | 0.8 | 0.5 |",
    ]
    with pytest.raises(ReprlabError, match="did you mean eval_pgd"):
        select(frame, ["eval_pdg"])
