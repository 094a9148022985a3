"""A whole device job at two sizes of validation and test (the larger ten times the smaller), and the assertion that
its peak resident memory (``VmHWM`` in the summary: the kernel's figure, which sees torch's and ONNX Runtime's
buffers, not only Python's) does not grow with them (design §3). (Import as ``from peaks import ...``.)

The jobs send every position (``--block attention``) of long prompts uncompressed (``--codec none``), so keeping the
eval and test taps until the side network arrives would cost more than the 10% allowed; the assertion checks that
too, so a passing run means the taps were not kept."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import FILLER, NEGATIVE, POSITIVE

SMALL, LARGE = 40, 400
WORDS = 120  # with the prompt template the batcher cuts each row at --max-length 128 tokens
#: every position, uncompressed: what the device would hold if it kept the taps
FLAGS = ["--block", "attention", "--codec", "none"]


def write_long_sentiment(directory: Path, n_eval: int, n_train: int = 16) -> Path:
    """train/dev/test.tsv of long sentences (every row reaches the batcher's max length)."""
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            words = rng.choices(FILLER, k=WORDS)
            words[rng.randrange(WORDS)] = rng.choice(POSITIVE if i % 2 else NEGATIVE)
            rows.append(f"{' '.join(words)}\t{i % 2}")
        (directory / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return directory


def assert_flat_peak(tmp_path: Path, run: Callable[[Path, Path, str], subprocess.CompletedProcess]) -> None:
    """``run(data, output_dir, job)`` runs a device job (a process of its own) at each size; the larger peaks within
    10% of the smaller, though keeping its eval and test taps would cost more than that."""
    summaries = {}
    for n in (SMALL, LARGE):
        out = tmp_path / f"device-{n}"
        done = run(write_long_sentiment(tmp_path / f"data-{n}", n), out, f"memory-{n}")
        assert done.returncode == 0, done.stderr[-3000:]
        summaries[n] = json.loads((out / "summary.json").read_text())
    small, large = summaries[SMALL], summaries[LARGE]
    assert (small["n_validation"], small["n_test"], large["n_validation"], large["n_test"]) == (SMALL, SMALL, LARGE, LARGE)
    kept = 2 * LARGE * large["bytes_per_sample"]  # what keeping the eval and test taps would hold at the larger size
    assert kept > 0.1 * small["peak_memory_bytes"], (kept, small["peak_memory_bytes"])
    assert large["peak_memory_bytes"] <= 1.1 * small["peak_memory_bytes"], (small["peak_memory_bytes"], large["peak_memory_bytes"])
    assert large["eval_agreement"] == 1.0  # validation forwarded again gives the taps the server scored
