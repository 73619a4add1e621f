"""Training metrics of one run, written where people and tools read them.

``RUN_DIR/metrics.jsonl`` holds one JSON object per row (kind, step, time, values); ``RUN_DIR/metrics.csv``
the same values in long format (kind, step, name, value) for spreadsheets; TensorBoard gets the scalars when
it is installed. Only rank 0 writes, so a multi-process run produces one log.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends metrics to RUN_DIR/metrics.jsonl and metrics.csv (and TensorBoard when installed)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.tb = None
        if enabled:
            if not self.csv.exists():
                self.csv.write_text("kind,step,name,value\n")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Append one row of ``values`` (e.g. kind "train" or "eval") for optimizer step ``step``."""
        if not self.enabled:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        with open(self.csv, "a", newline="") as fh:
            writer = csv.writer(fh)
            for name, value in values.items():
                writer.writerow([kind, step, name, value])
                if self.tb is not None and isinstance(value, int | float) and value is not None:
                    self.tb.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
