"""The training log: ``train_log.jsonl`` (the record), ``train_log.csv`` (the same rows with
fixed columns, for spreadsheets) and TensorBoard scalars when tensorboard is installed.

The files are appended as training goes; after a crash they may run past the last
checkpoint, so a resumed run first truncates them to the checkpoint's step.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from seqformer.errors import SeqformerError
from seqformer.io import atomic_write_text

log = logging.getLogger("seqformer")
JSONL, CSV = "train_log.jsonl", "train_log.csv"
COLUMNS = ("step", "epoch", "loss", "nll", "lr", "tokens", "gnorm", "tok_per_s", "elapsed_s",
           "valid_nll", "valid_ppl", "bleu", "final")


def _csv_text(records: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log; a torn last line (killed mid-write) is dropped."""
    records = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class RunLog:
    """Appends training and validation records; a no-op on ranks other than 0."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.out, self.enabled = Path(out), enabled
        self._tb: Any = None

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (the resumed checkpoint) so the log is the true curve."""
        if not self.enabled:
            return
        records = [r for r in read_log(self.out / JSONL) if r.get("step", 0) <= step]
        try:
            atomic_write_text(self.out / JSONL, "".join(json.dumps(r) + "\n" for r in records))
            atomic_write_text(self.out / CSV, _csv_text(records, header=True))
        except OSError as err:
            raise SeqformerError(f"{self.out}: cannot rewrite the training log ({err.strerror or err})") from None
        self._open_tensorboard(purge_step=step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.out / JSONL, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            with open(self.out / CSV, "a", encoding="utf-8", newline="") as f:
                f.write(_csv_text([record], header=False))
        except OSError as err:
            raise SeqformerError(f"{self.out}: cannot write the training log ({err.strerror or err})") from None
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "final") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def _open_tensorboard(self, purge_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.close()
        self._tb = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=purge_step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
