"""The bundle cache: the device bundle a command runs or serves when none is given (``mobillm device`` without
``--bundle``, ``mobillm serve --web``), exported once per machine and reused by every later command that asks for
the same one.

A bundle lives in ``$MOBILLM_CACHE/bundles/<key>`` (without ``$MOBILLM_CACHE``: ``~/.cache/mobillm/bundles/<key>``).
The key is a hash of what the bundle is made of (:func:`bundle_request`): the model's identity (a local folder or
file, or an alias's file: its resolved path and each file's size and mtime, so a changed model is a new bundle; a
hub id: the id), the shortcut layers, the weight format, the file set and the mobillm version. A marker file in the
bundle records that request.

Job bundles serve classification jobs (``--runtime auto`` runs causal LM on torch), so they leave out the
generation graph and the full head (``mobillm export --no-generate``: half the export's time). The export runs
``mobillm export`` in a child process, so the calling process never imports torch (and never holds the exporter's
memory). It writes into a temporary folder beside the bundle's, renamed into place once whole: a command never
sees half a bundle, and of two commands exporting the same one at once, the second to finish drops its copy. The
temporary folder is locked while its export runs; the next export removes the unlocked ones (left by a killed
command).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mobillm import PROGRESS_LOGGER, __version__
from mobillm.bundle.config import CORE_FILES, WEIGHT_FORMATS
from mobillm.exceptions import ConfigError, MobillmError

__all__ = ["CACHE_ENV", "DEFAULT_BUNDLE_WEIGHTS", "WEB_BUNDLE_WEIGHTS", "bundle_cache", "bundle_files", "bundle_request", "job_bundle"]

progress = logging.getLogger(PROGRESS_LOGGER)

#: the environment variable naming mobillm's cache folder (bundles go in its ``bundles/``)
CACHE_ENV = "MOBILLM_CACHE"
#: the weight format of an exported bundle unless told otherwise: fp32 holds the torch device's accuracy exactly;
#: int8-smooth is ~2x faster and held SST-2's (3 seeds) but is unmeasured on the packaged task beyond one run,
#: int8-dynamic is as fast but cost 3.6 points of SST-2 (BENCHMARKS §19)
DEFAULT_BUNDLE_WEIGHTS = "fp32"
#: the weight format of the bundle the device page runs (``serve --web MODEL``) unless told otherwise: what a phone
#: downloads (4-bit matmuls and embedding: 94 MB of SmolLM2-135M's bundle against fp32's 546 MB; BENCHMARKS §21)
WEB_BUNDLE_WEIGHTS = "web"
_REQUEST = "export_request.json"
_EXPORT_MODULES = ("torch", "transformers", "onnxscript")
_MISSING_EXPORTER = ("a bundle that is not in the cache yet is exported first, which needs {} (pip install "
                     "'mobillm[export]'): give --bundle DIR written by `mobillm export` on a machine that has them, or "
                     "run the backbone in PyTorch with --runtime torch")


def bundle_cache() -> Path:
    """The folder that holds the cached bundles: ``$MOBILLM_CACHE/bundles``, else ``~/.cache/mobillm/bundles``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "mobillm") / "bundles"


def _file_stats(path: Path) -> list[list[Any]]:
    """``[relative name, size, mtime_ns]`` of ``path`` (a file) or of every file under it (a folder), sorted."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[p.name if p == path else p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


# The alias table lives beside the torch loader, which the calling process never imports (a device's memory is
# measured): an alias is resolved in a child process.
_RESOLVE_ALIAS = """
import json, sys
from mobillm.backbone.loading import ALIASES, resolve_model
from mobillm.exceptions import MobillmError
try:
    source = resolve_model(sys.argv[1]) if sys.argv[1] in ALIASES else None
    print(json.dumps({"file": None if source is None else source.path + "/" + source.gguf_file}))
except MobillmError as err:
    print(json.dumps({"error": str(err)}))
"""


def _require_exporter() -> None:
    missing = [m for m in _EXPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MobillmError(_MISSING_EXPORTER.format(", ".join(missing)))


def _model_identity(model: str) -> dict[str, Any]:
    """What makes ``model`` this model: a local folder or file, or an alias's file, by its resolved path and its
    files' sizes and mtimes; a hub id by the id."""
    path = Path(model).expanduser()
    if not path.exists():
        if importlib.util.find_spec("torch") is None:
            _require_exporter()
        done = subprocess.run([sys.executable, "-c", _RESOLVE_ALIAS, model], capture_output=True, text=True)
        if done.returncode:
            raise MobillmError(f"cannot resolve the model {model!r}: {done.stderr.strip()[-2000:]}")
        answer = json.loads(done.stdout)
        if "error" in answer:
            raise MobillmError(answer["error"])
        if answer["file"] is None:
            return {"hub_id": model}
        path = Path(answer["file"])
    path = path.resolve()
    return {"path": str(path), "files": _file_stats(path)}


def bundle_request(model: str, shortcuts: str | None, weights: str) -> dict[str, Any]:
    """What a cached bundle is made of; its hash names the bundle's folder."""
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"--bundle-weights {weights!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    return {"model": model, "identity": _model_identity(model), "shortcuts": shortcuts, "weights": weights,
            "generate": False, "mobillm_version": __version__}


def _key(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:32]


def _whole(directory: Path, request: dict[str, Any]) -> bool:
    """Does ``directory`` hold the bundle of ``request``, every file of it (a bundle of an older version may lack one)?"""
    marker = directory / _REQUEST
    return (marker.is_file() and json.loads(marker.read_text()) == request
            and all((directory / name).is_file() for name in CORE_FILES))


def bundle_files(directory: Path) -> list[str]:
    """The files of a cached bundle that a device reads (every file but the cache's marker), sorted."""
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != _REQUEST)


def job_bundle(model: str, shortcuts: str | None, weights: str) -> Path:
    """The cached bundle of ``model`` tapping ``shortcuts`` (None: the default layers) in ``weights``, exported now
    unless an earlier command left exactly that bundle in the cache. Raises ``MobillmError`` when the export fails
    or this install cannot export."""
    request = bundle_request(model, shortcuts, weights)
    cache = bundle_cache()
    directory = cache / _key(request)
    if _whole(directory, request):
        progress.info("device bundle: reusing %s (%s, %s weights)", directory, model, weights)
        return directory
    _require_exporter()
    cache.mkdir(parents=True, exist_ok=True)
    _sweep(cache)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=cache))
    held = os.open(staging, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # "being exported": released when this process ends, however it ends
    try:
        command = [sys.executable, "-m", "mobillm", "export", str(staging), "--model", model, "--weights", weights,
                   "--no-generate"]
        if shortcuts is not None:
            command += ["--shortcuts", shortcuts]
        progress.info("device bundle: exporting %s (%s weights) into the cache %s, once (about a minute for a "
                      "135M model; the exporter's lines follow)", model, weights, directory)
        started = time.perf_counter()
        done = subprocess.run(command)
        if done.returncode:
            raise MobillmError(f"exporting the device bundle failed (exit {done.returncode}, its output is above): "
                               "fix that, give --bundle DIR, or use --runtime torch")
        (staging / _REQUEST).write_text(json.dumps(request, indent=2) + "\n")
        if directory.exists() and not _whole(directory, request):
            shutil.rmtree(directory)  # a broken bundle (files deleted by hand): replaced
        try:
            staging.rename(directory)
        except OSError:
            if not _whole(directory, request):
                raise
            progress.info("device bundle: another command exported it first; using its copy")
        else:
            progress.info("device bundle: exported in %.0f s", time.perf_counter() - started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(held)
    return directory


def _sweep(cache: Path) -> None:
    """Remove the temporary folders of exports whose command died (killed mid-export: nothing else removes them);
    a folder another command is still exporting into is locked, and kept."""
    for staging in cache.glob(".*"):
        try:
            fd = os.open(staging, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(fd)
