"""Training curves: one CSV row per epoch (loss, accuracy, learning rate), written as training
goes (``convforge train --log curves.csv``), read back by ``convforge plot`` and the report.

The file is rewritten whole and atomically after every epoch (a few hundred bytes), so a reader
never sees half a row. The rows come from the run's history, which every checkpoint records
(``convforge train``), so a resumed run's file starts with the epochs before it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from engine.checkpoint import write_atomically
from engine.train import EpochResult

COLUMNS = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr", "seconds")


def epoch_row(result: EpochResult) -> dict[str, float | None]:
    """The row of one epoch; ``epoch`` counts from 1, as the progress lines do."""
    row = {key: getattr(result, key) for key in COLUMNS}
    row["epoch"] = result.epoch + 1
    return row


def write_curves(path: str | Path, rows: list[dict[str, float | None]]) -> None:
    write_atomically(Path(path), format_curves(rows).encode())


def format_curves(rows: list[dict[str, float | None]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[key] is None else row[key] for key in COLUMNS])
    return text.getvalue()


def read_curves(path: str | Path) -> list[dict[str, float | None]]:
    """The rows of a curves file; a file that is not one raises ValueError naming the line."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a curves CSV file (not text)") from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or tuple(lines[0]) != COLUMNS:
        raise ValueError(
            f"{path} is not a curves file of convforge train --log: its header "
            f"must be {','.join(COLUMNS)}"
        )
    rows = []
    for number, fields in enumerate(lines[1:], start=2):
        try:
            if len(fields) != len(COLUMNS):
                raise ValueError
            row = {k: float(v) if v else None for k, v in zip(COLUMNS, fields, strict=True)}
        except ValueError:
            raise ValueError(
                f"{path}, line {number}: expected {len(COLUMNS)} numbers, but got {fields}"
            ) from None
        row["epoch"] = int(row["epoch"])
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no epochs yet")
    return rows
