"""The device bundle a job runs on when ``--bundle`` is not given: exported once into the run's folder, reused
by every later run that asks for the same one.

Job bundles serve classification jobs (``--runtime auto`` runs causal LM on torch), so they leave out the
generation graph and the full head (``mobillm export --no-generate``: half the export's time). The export runs
``mobillm export`` in a child process, so the device's own process never imports torch (and never holds the
exporter's memory). A marker file beside the bundle records what was asked for (model, shortcuts, weight
format, mobillm version); a bundle whose marker differs, or a half-written one, or one that lacks a file this
version's bundles hold, is exported again; a bundle someone put there by hand (no marker) is left alone and the
run refused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from mobillm import __version__
from mobillm.bundle.config import CONFIG_NAME, CORE_FILES, WEIGHT_FORMATS
from mobillm.exceptions import ConfigError, MobillmError

__all__ = ["BUNDLE_DIR", "DEFAULT_BUNDLE_WEIGHTS", "job_bundle"]

log = logging.getLogger("mobillm")

#: the folder in a run's output directory that holds its exported bundle
BUNDLE_DIR = "bundle"
#: the weight format of an exported bundle unless told otherwise: fp32 holds the torch device's accuracy exactly;
#: int8-smooth is ~2x faster and held SST-2's (3 seeds) but is unmeasured on the packaged task beyond one run,
#: int8-dynamic is as fast but cost 3.6 points of SST-2 (BENCHMARKS §19)
DEFAULT_BUNDLE_WEIGHTS = "fp32"
_REQUEST = "export_request.json"
_EXPORT_MODULES = ("torch", "transformers", "onnxscript")


def job_bundle(model: str, shortcuts: str | None, weights: str, directory: str | Path) -> Path:
    """``directory`` holding a bundle of ``model`` tapping ``shortcuts`` (None: the default layers) in ``weights``,
    exported now unless a previous run left exactly that bundle there."""
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"--bundle-weights {weights!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    directory = Path(directory)
    request = {"model": model, "shortcuts": shortcuts, "weights": weights, "generate": False,
               "mobillm_version": __version__}
    marker = directory / _REQUEST
    whole = all((directory / name).is_file() for name in CORE_FILES)  # an older export may lack a file
    if whole and marker.is_file() and json.loads(marker.read_text()) == request:
        log.info("device bundle: reusing %s (%s weights)", directory, weights)
        return directory
    missing = [m for m in _EXPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MobillmError(
            f"--runtime onnx without --bundle exports a bundle first, which needs {', '.join(missing)} "
            "(pip install 'mobillm[export]'): give --bundle DIR written by `mobillm export` on a machine that has "
            "them, or run the backbone in PyTorch with --runtime torch"
        )
    if (directory / CONFIG_NAME).is_file() and not marker.is_file():
        raise MobillmError(f"{directory} holds a device bundle that no run exported for itself: run it with --bundle "
                           f"{directory}, or move it away to let this run export its own")
    if directory.exists():  # our bundle of another request, or an interrupted export: never mix their files
        shutil.rmtree(directory)
    command = [sys.executable, "-m", "mobillm", "export", str(directory), "--model", model, "--weights", weights,
               "--no-generate"]
    if shortcuts is not None:
        command += ["--shortcuts", shortcuts]
    log.info("device bundle: exporting %s (%s weights) to %s, once", model, weights, directory)
    done = subprocess.run(command)
    if done.returncode:
        raise MobillmError(f"exporting the device bundle failed (exit {done.returncode}, its output is above): "
                           "fix that, give --bundle DIR, or use --runtime torch")
    marker.write_text(json.dumps(request, indent=2) + "\n")
    return directory
