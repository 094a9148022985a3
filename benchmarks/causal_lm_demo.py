"""Instruction tuning through the server on real text: SST-2 sentences turned into instruction -> answer pairs.

The prompt asks for the review's sentiment without saying how to answer; every response has one fixed format,
``Sentiment: positive.`` / ``Sentiment: negative.``. The zero-shot SmolLM2-135M-Instruct answers in prose, so
the held-out loss on response tokens and the share of generations in the trained format both show what the
side network learned. Runs ``mobillm finetune --task causal-lm`` (server and device as two processes), then
greedy generation on the device for held-out prompts, with the bare backbone (``--base``) and with the side
network.

    python benchmarks/causal_lm_demo.py [--train-samples 2000] [--generate 100]

Writes results/causal_lm/{sst2_instructions/*.jsonl, finetune/, results.json, causal_lm.png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from mobillm.bench.io import machine

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
PROMPT = "What is the sentiment of this movie review?\n\n{sentence}"
RESPONSE = "Sentiment: {label}."
FORMAT = re.compile(r"^Sentiment: (positive|negative)\.$")
LABELS = ["negative", "positive"]


def write_instructions(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        with (SST2 / f"{split}.tsv").open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        lines = [json.dumps({"prompt": PROMPT.format(sentence=r["sentence"].strip()),
                             "response": RESPONSE.format(label=LABELS[int(r["label"])])}) for r in rows]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return out


def generations(side_dir: Path, examples, base: bool, max_new_tokens: int = 16) -> list[str]:
    """Greedy generations on the device (backbone KV cache + side network), as ``mobillm generate`` does."""
    from mobillm.backbone import FrozenHead, load_pretrained
    from mobillm.data.lm import LMBatcher
    from mobillm.device.generate import Generator, Sampling
    from mobillm.device.taps import TappedBackbone
    from mobillm.sidenet import SideNetwork
    from mobillm.wire.codecs import get_codec

    side = SideNetwork.from_pretrained(side_dir)
    if base:
        side = SideNetwork(side.config)
    model, tokenizer = load_pretrained("smollm2-135m")
    head = FrozenHead.from_model(model)
    batcher = LMBatcher(tokenizer)
    generator = Generator(TappedBackbone(model, side.config.shortcuts), side, head, get_codec(side.config.codec), {batcher.eos_id})
    out = []
    for example in examples:
        tokens = [t for t in generator.generate(batcher.prompt_ids(example.prompt), Sampling(max_new_tokens=max_new_tokens))
                  if t != batcher.eos_id]
        out.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return out


def score(texts: list[str], examples) -> dict:
    """Format compliance, the label read in that format, and — fairer to prose answers — the first sentiment word."""
    matches = [FORMAT.match(t) for t in texts]
    truth = [FORMAT.match(e.response)[1] for e in examples]
    first = [next(iter(re.findall(r"\b(positive|negative)\b", t.lower())), None) for t in texts]
    return {
        "format_rate": sum(m is not None for m in matches) / len(texts),
        "label_accuracy": sum(m is not None and m[1] == y for m, y in zip(matches, truth)) / len(texts),
        "first_sentiment_word_accuracy": sum(w == y for w, y in zip(first, truth)) / len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--generate", type=int, default=100, help="held-out test prompts to generate for")
    parser.add_argument("--extra", default="", help="extra `mobillm finetune` options")
    parser.add_argument("--skip-finetune", action="store_true", help="reuse the fine-tuning run already in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "causal_lm")
    args = parser.parse_args()
    if not SST2.is_dir():
        sys.exit(f"SST-2 not found at {SST2}")
    data = write_instructions(args.out / "sst2_instructions")
    run_dir = args.out / "finetune"
    cmd = [sys.executable, "-m", "mobillm", "finetune", "--task", "causal-lm", "--data", str(data),
           "--max-train-samples", str(args.train_samples), "--max-eval-samples", str(args.eval_samples),
           "--output-dir", str(run_dir), *shlex.split(args.extra)]
    if not args.skip_finetune:
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    summary = json.loads((run_dir / "device" / "summary.json").read_text())

    from mobillm.data.lm import load_lm_dataset

    test = load_lm_dataset(str(data)).test[: args.generate]
    side_dir = run_dir / "device" / "side_network"
    base, tuned = generations(side_dir, test, base=True), generations(side_dir, test, base=False)
    result = {
        "machine": machine(),
        "command": shlex.join(["mobillm", *cmd[3:]]),
        "zero_shot_test": summary["zero_shot_test"], "fine_tuned_test": summary["test"],
        "best_val_loss": summary["best_val_loss"], "eval_loss_difference": summary["eval_loss_difference"],
        "device_seconds_per_sample": summary["device_seconds_per_sample"], "bytes_per_sample": summary["bytes_per_sample"],
        "peak_memory_mib": summary["peak_memory_bytes"] / 2**20, "wall_seconds": summary["wall_seconds"],
        "generated": len(test), "zero_shot_generation": score(base, test), "fine_tuned_generation": score(tuned, test),
        "samples": [{"prompt": e.prompt, "reference": e.response, "zero_shot": b, "fine_tuned": t}
                    for e, b, t in list(zip(test, base, tuned))[:8]],
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "causal_lm.png")
    z, f = result["zero_shot_test"], result["fine_tuned_test"]
    print(f"response loss {z['loss']:.3f} -> {f['loss']:.3f}; format {result['zero_shot_generation']['format_rate']:.0%} -> "
          f"{result['fine_tuned_generation']['format_rate']:.0%}; label accuracy of generations "
          f"{result['zero_shot_generation']['label_accuracy']:.0%} -> {result['fine_tuned_generation']['label_accuracy']:.0%}; "
          f"first sentiment word right {result['zero_shot_generation']['first_sentiment_word_accuracy']:.0%} -> "
          f"{result['fine_tuned_generation']['first_sentiment_word_accuracy']:.0%}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    names = ["zero-shot", "fine-tuned"]
    panels = [
        ([result["zero_shot_test"]["loss"], result["fine_tuned_test"]["loss"]], "held-out loss (response tokens)"),
        ([result["zero_shot_generation"]["format_rate"], result["fine_tuned_generation"]["format_rate"]], "generations in the trained format"),
        ([result["zero_shot_generation"]["label_accuracy"], result["fine_tuned_generation"]["label_accuracy"]], "correct, in the format"),
        ([result["zero_shot_generation"]["first_sentiment_word_accuracy"],
          result["fine_tuned_generation"]["first_sentiment_word_accuracy"]], "first sentiment word correct"),
    ]
    for ax, (values, title) in zip(axes, panels):
        ax.bar(names, values, color=["#999999", "#2a7ab9"])
        ax.set_title(title, fontsize=10)
    fig.suptitle("SmolLM2-135M-Instruct, SST-2 as instructions, mobillm finetune --task causal-lm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
