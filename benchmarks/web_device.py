"""The JavaScript device on Node (web/device.mjs, onnxruntime-web's WASM) beside the Python bundle device (native
ONNX Runtime), BENCHMARKS §20: ``mobillm bench web --devices python,node`` (src/mobillm/bench/web.py — one
``mobillm serve --web``, the same bundle, data, job template and threads, the device and the server on separate
cores) with §20's sizes: the fp32 bundle, 512 training and 128 validation sentences, one thread.

    python benchmarks/web_device.py [--train-samples 512] [--threads 1] [--weights fp32] [any `mobillm bench web` option]

Writes results/web_device/{results.json,results.csv,web.png}; SST-2 is read where ``mobillm bench`` reads it
(``$MOBILLM_SST2`` names another folder).
"""

import sys

from mobillm.bench.io import results_dir
from mobillm.bench.web import main

if __name__ == "__main__":
    # later options win: the command line's override these defaults
    main(["--devices", "python,node", "--weights", "fp32", "--train-samples", "512", "--eval-samples", "128",
          "--threads", "1", "--out", str(results_dir("web_device")), *sys.argv[1:]])
