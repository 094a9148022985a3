"""The JavaScript device (web/device.mjs on Node, onnxruntime-web's WASM) beside the Python bundle device (native
ONNX Runtime) on one job each against one `mobillm serve`: the same bundle, data, template and number of threads,
the device pinned to one core and the server to another (as BENCHMARKS §12), one after the other in one run.

    python benchmarks/web_device.py [--data ../shared/data/sst2] [--max-train-samples 512] [--threads 1]

Writes results/web_device/{results.json, results.csv, web_device.png}: per device the seconds per training sample of
its forward work (tokenize, taps, codec), bytes per sample, zero-shot and fine-tuned test accuracy, wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from mobillm.bench.io import machine, pyplot, results_dir, sst2_dir, write_rows
from mobillm.bundle.config import BundleConfig
from mobillm.ports import free_port, wait_listening
from mobillm.recipes.job_bundle import job_bundle
from mobillm.recipes.job_template import job_template
from mobillm.recipes.options import SideOptions
from mobillm.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if len(os.sched_getaffinity(0)) > 1 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(sst2_dir()))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--weights", default="fp32")
    parser.add_argument("--max-train-samples", type=int, default=512)
    parser.add_argument("--max-eval-samples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--codec", default="nf4")
    parser.add_argument("--out", default=str(results_dir("web_device")))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = job_bundle(args.model, None, args.weights)
    options = SideOptions(codec=args.codec, max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples)
    template = out / "template.json"
    template.write_text(json.dumps(job_template(BundleConfig.load(bundle), options, 1, TrainConfig(method="side"))))

    port = free_port()
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    with (out / "server.log").open("w") as log:
        server = subprocess.Popen([*_pinned(1), sys.executable, "-m", "mobillm", "serve", "--port", str(port), "--no-auth",
                                   "--jobs-dir", str(out / "jobs")], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(port, server)
        url = f"ws://127.0.0.1:{port}"
        common = ["--data", args.data, "--max-train-samples", str(args.max_train_samples)]
        runs = {
            "python (onnxruntime)": [sys.executable, "-m", "mobillm", "device", "--runtime", "onnx", "--bundle", str(bundle),
                                     "--server", url, "--job", "python", "--threads", str(args.threads), "--codec",
                                     args.codec, "--max-eval-samples", str(args.max_eval_samples),
                                     "--output-dir", str(out / "python"), *common],
            "node (onnxruntime-web)": ["node", str(ROOT / "web" / "device.mjs"), "--server", url, "--job", "node",
                                       "--bundle", str(bundle), "--template", str(template), "--threads", str(args.threads),
                                       "--output-dir", str(out / "node"), *common],
        }
        rows = []
        for name, command in runs.items():
            print(f"== {name}: {' '.join(command)}", flush=True)
            subprocess.run([*_pinned(0), *command], check=True, env=env)
            summary = json.loads((out / ("python" if name.startswith("python") else "node") / "summary.json").read_text())
            rows.append({
                "device": name, "threads": args.threads, "weights": args.weights, "codec": args.codec,
                "n_train": summary["n_train"], "n_test": summary["n_test"],
                "device_seconds_per_sample": summary["device_seconds_per_sample"],
                "bytes_per_sample": summary["bytes_per_sample"],
                "zero_shot_test_accuracy": summary["zero_shot_test"]["accuracy"],
                "test_accuracy": summary["test"]["accuracy"], "eval_agreement": summary["eval_agreement"],
                "wall_seconds": summary["wall_seconds"],
            })
    finally:
        server.terminate()
        server.wait()
    ratio = rows[1]["device_seconds_per_sample"] / rows[0]["device_seconds_per_sample"]
    write_rows(out, rows, machine=machine(), node_over_python=ratio, data=args.data)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r["device"] for r in rows], [r["device_seconds_per_sample"] for r in rows])
    ax.set_xlabel(f"device seconds per training sample ({args.threads} thread(s), {args.weights} bundle)")
    ax.set_title(f"JS / Python: {ratio:.2f}x")
    fig.tight_layout()
    fig.savefig(out / "web_device.png", dpi=120)
    for row in rows:
        print(row)
    print(f"node / python seconds per sample: {ratio:.2f}x")


if __name__ == "__main__":
    main()
