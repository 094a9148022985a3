"""Coverage-guided fuzzing (atheris/libFuzzer) of what the server does with a frame: decode, validate, cache.

Every input must end in a ``WireError`` (which the server turns into an ``Error`` message) or be accepted;
anything else is a crash that libFuzzer reports with the input that caused it. Seeded with valid Batch
messages, so mutations explore the near-valid space. Bounded in time:

    pip install atheris     # not a dev dependency: only this script needs it
    python benchmarks/fuzz_decoder.py --seconds 120

libFuzzer's last line says how many inputs were tried ("Done N runs in S second(s)").
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    args, rest = parser.parse_known_args()
    try:
        import atheris
    except ImportError:
        sys.exit("this script needs atheris: pip install atheris")

    with atheris.instrument_imports():  # coverage feedback from the decoder and the codecs
        for module in ("mobillm.wire.messages", "mobillm.wire.codecs", "mobillm.server.job"):
            importlib.import_module(module)
    import torch
    from conftest import tiny_model
    from test_hostile import LABELS, B, H, batch_message, offer

    from mobillm.backbone import FrozenHead
    from mobillm.exceptions import WireError
    from mobillm.server.job import Job
    from mobillm.sidenet import SideConfig
    from mobillm.train_config import TrainConfig
    from mobillm.wire.messages import Hello

    side = SideConfig(hidden_size=H, num_backbone_layers=4, shortcuts=[2, 4], width=8, block="mlp", num_labels=LABELS,
                      label_token_ids=[5, 6], codec="int8")
    hello = Hello(job="fuzz", model="tiny", fingerprint="ab", side_config=side,
                  train_config=TrainConfig(method="side", epochs=1, batch_size=B), train_samples=10**9)
    scratch = Path(tempfile.mkdtemp(prefix="mobillm-fuzz-"))
    job = Job(hello, FrozenHead.from_model(tiny_model("llama", hidden=H)), scratch / "job", 64 << 20)
    corpus = scratch / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"batch{i}").write_bytes(batch_message(seq=i, acts=torch.randn(B, H) * (i + 1)))

    def one_input(data: bytes) -> None:
        try:
            offer(job, data)
        except WireError:
            pass

    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", "-print_final_stats=1", *rest, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
