"""The device page in a browser beside the native devices: SmolLM2-135M's device bundle (``--weights``, default
``web``: 4-bit matmuls and token embedding) on SST-2, one job each against one ``mobillm serve --web MODEL:WEIGHTS``.

Devices (``--devices``, default ``page,python,lora``), each at every ``--threads`` count:

- ``page``: the device page (web/page/) in headless Chromium driven by Playwright, as tests/test_web_page.py drives
  it — opened from a job link on http://127.0.0.1 (a secure context that the server's COOP/COEP headers isolate),
  the SST-2 files picked in the page, the job run to its end. The page runs ``ceil(cores / 2)`` WASM threads (at most
  4): ``navigator.hardwareConcurrency`` is set to twice ``--threads`` by an init script. WebGPU: the page runs
  ONNX Runtime's WASM build only; whether this Chromium offers WebGPU at all is recorded, nothing is measured on it.
- ``python``: ``mobillm device --runtime onnx`` on the same bundle, data and job template (native ONNX Runtime).
- ``node``: web/device.mjs on Node (onnxruntime-web's WASM outside a browser), with the server's template.
- ``lora``: ``mobillm train --method lora`` on the device: the same sentences, batch size and length, one epoch;
  its fair setting: the fp32 device checkpoint (no GGUF load), the device's thread count, and only its training
  steps timed (forward + backward + AdamW), never its validation.

What each row reports:

- seconds per training sample of the device's forward work (tokenize, taps, codec; the page's and the native
  devices' ``device_seconds_per_sample``), LoRA's seconds per sample of its training steps;
- peak memory: the page's Chromium renderer (the renderer process under this one with the most CPU time: the one
  that ran the job) ``VmHWM`` from /proc, and the sum of every Chromium process's ``VmHWM`` (an upper bound: the
  processes peak at different times and share pages); the other devices' peak RSS (``wait4``'s ``ru_maxrss``);
- test accuracy of the whole job (the page scores the held-out test split locally, as the native devices do);
- for the page: the bytes it fetched (Resource Timing's ``transferSize``: the bundle, ONNX Runtime's WASM runtime,
  the tokenizer library, the page and its modules) and the seconds from the start of its navigation to its first
  Batch message (on the page's clock, when the job's WebSocket took the frame: an init script instruments the
  socket; DevTools' frame events reach Playwright late while WASM holds the page), with when it had read the data,
  loaded the model (its socket opened) and had the server's Welcome — on a cold cache (a fresh browser profile:
  the job's own visit) and a warm one (the same profile reopened: the bundle comes from Cache Storage, the runtime
  is revalidated; that visit stops at its first batch). The benchmark picks the files and starts the job at once.
  The server loads its model for its first job: the native device runs first, so the page never waits for that
  (with ``--devices page`` alone the first cold visit's Welcome includes it).

Cores: the device (Chromium, its renderer included, or the native device) on the first ``threads`` cores, the
server on the last core — on a 2-core machine the server shares a core with a 2-thread device.

    mobillm bench web [--quick] [--train-samples 2000] [--threads 1,2] [--weights web] [--devices page,python,lora]

Validation is the first ``--eval-samples`` rows of SST-2's dev.tsv (the page cannot cap it: every device reads
the same cut files), test the first ``--test-samples`` of test.tsv (all 872 by default). ``--quick``: 64 training,
32 validation and 64 test sentences (a smoke run of a few minutes). Writes results/web/{results.json,results.csv,
web.png}, and each run's log, summary (page-tN.json: both visits) and the server's log under the same folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mobillm.bench.io import machine, number_list, pyplot, require_sst2, results_dir, write_rows
from mobillm.ports import free_port, stop, wait_listening
from mobillm.procfs import status_kib
from mobillm.recipes.job_bundle import WEB_BUNDLE_WEIGHTS
from mobillm.server.web import WebFiles

MODEL = "smollm2-135m"
DEVICES = ("page", "python", "node", "lora")
DEFAULT_DEVICES = ("page", "python", "lora")
#: Debian's Chromium (the web page test's); $MOBILLM_CHROMIUM names another build
CHROMIUM = os.environ.get("MOBILLM_CHROMIUM", "/usr/bin/chromium")
#: headless Chromium's flags, here and in tests/test_web_page.py (which adds a host mapping)
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: the most WASM threads the page runs (web/src/browser/backend.mjs's MAX_THREADS)
MAX_PAGE_THREADS = 4
_RUNTIMES = {"page": "onnxruntime-web WASM, Chromium", "python": "onnxruntime, native",
             "node": "onnxruntime-web WASM, Node", "lora": "torch + peft, LoRA"}


class BenchError(RuntimeError):
    """A run of the benchmark failed; the message says which and where its log is."""


# --- /proc: the processes under this one and their peak memory ----------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name (which may hold spaces): field 3 (state) onwards."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """Every live process under ``root`` (children, their children, …), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def cmdline(pid: int) -> list[str]:
    """The words of ``pid``'s command line; [] once it is gone. Split on blanks as well as NULs: Chromium rewrites
    its child processes' command lines into one blank-separated string."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chromium_memory(root: int) -> dict[str, Any]:
    """Peak memory of the Chromium processes under ``root``: the renderer that used the most CPU (the page's: its
    WASM threads are threads of that process) and the sum of every Chromium process's VmHWM, in MiB."""
    processes = [(pid, cmdline(pid)) for pid in descendants(root)]
    chromium = [(pid, args) for pid, args in processes
                if args and Path(args[0]).name in ("chromium", "chrome", "headless_shell", "chrome-headless-shell")]
    renderers = [pid for pid, args in chromium if "--type=renderer" in args]
    if not renderers:
        raise BenchError(f"no Chromium renderer process under pid {root}")
    page = max(renderers, key=cpu_seconds)
    peaks = [status_kib("VmHWM", pid) or 0 for pid, _ in chromium]
    return {"renderer_pid": page, "renderer_peak_mib": (status_kib("VmHWM", page) or 0) / 1024,
            "renderers": len(renderers), "chromium_processes": len(chromium),
            "chromium_peak_sum_mib": sum(peaks) / 1024}


# --- cores ---------------------------------------------------------------------------------------------------------

def core_plan(threads: int) -> tuple[list[int], list[int]]:
    """(the device's cores, the server's): the first ``threads`` cores, and the last one."""
    cores = sorted(os.sched_getaffinity(0))
    return cores[:threads], cores[-1:]


def _pin(cores: list[int]) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, cores)


def _pinned_chromium(folder: Path, cores: list[int]) -> str:
    """An executable that starts Chromium on ``cores`` (``taskset``: every process and thread it starts inherits
    them); Chromium itself where there is no taskset."""
    if shutil.which("taskset") is None:
        return CHROMIUM
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"chromium-cores-{'-'.join(map(str, cores))}"
    path.write_text(f'#!/bin/sh\nexec taskset -c {",".join(map(str, cores))} {CHROMIUM} "$@"\n')
    path.chmod(0o755)
    return str(path)


# --- what the page did and fetched --------------------------------------------------------------------------------

#: Resource Timing entries' categories by URL path prefix (mobillm.server.web's routes), first match wins
DOWNLOAD_CATEGORIES = (("bundle", "/device/bundle/"), ("onnxruntime-web", "/device/vendor/onnxruntime-web/"),
                       ("tokenizers", "/device/vendor/tokenizers/"), ("page", "/device"))


def download_bytes(entries: list[dict]) -> dict[str, dict[str, int]]:
    """Resource Timing entries (``name``: URL, ``transferSize``, ``encodedBodySize``) summed per category:
    ``transfer`` (bytes on the wire, headers included; 0 for a file from the browser's HTTP cache), ``body``
    (encoded body bytes) and ``requests``."""
    from urllib.parse import urlsplit

    out = {name: {"transfer": 0, "body": 0, "requests": 0} for name, _ in (*DOWNLOAD_CATEGORIES, ("other", ""))}
    for entry in entries:
        path = urlsplit(entry["name"]).path
        name = next((n for n, prefix in DOWNLOAD_CATEGORIES if path.startswith(prefix)), "other")
        out[name]["transfer"] += int(entry.get("transferSize", 0))
        out[name]["body"] += int(entry.get("encodedBodySize", 0))
        out[name]["requests"] += 1
    return out


_RESOURCES = """() => [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
    .map((e) => ({ name: e.name, transferSize: e.transferSize, encodedBodySize: e.encodedBodySize }))"""
#: the page's state (#app's data-state); evaluate() waits for a main thread busy in a WASM run, a locator times out
_STATE = "document.querySelector('#app').dataset.state"
_PROGRESS = """() => [document.querySelector('#stage').textContent,
    ...['samples', 'step', 'eta'].map((f) => document.querySelector(`#progress dd[data-field="${f}"]`).textContent)]"""
_WEBGPU = """async () => {
    if (navigator.gpu === undefined) return { api: false, adapter: false };
    const adapter = await navigator.gpu.requestAdapter().catch(() => null);
    return { api: true, adapter: adapter !== null };
}"""


#: Instruments on the page's clock (``performance.now()``: ms since navigation started), before its scripts run:
#: when ``#app`` first took each state (checking, loading-model, training, …), when the job's socket opened, its
#: first message came in (the server's Welcome) and the first message of each type went out (``hello``, ``batch``:
#: the type from the frame's safetensors header, ``wire/frame.mjs``'s layout). Read as ``window.mobillmBench``.
_INSTRUMENTS = """(() => {
  const bench = (globalThis.mobillmBench = { states: {}, wire: {} });
  const now = () => performance.now();
  const Native = globalThis.WebSocket;
  const decoder = new TextDecoder();
  const typeOf = (data) => {
    try {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data)
        : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
      return JSON.parse(JSON.parse(decoder.decode(bytes.subarray(8, 8 + n))).__metadata__.mobillm).type;
    } catch { return null; }
  };
  globalThis.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      bench.wire.socket ??= now();
      this.addEventListener('message', () => { bench.wire.welcome ??= now(); }, { once: true });
    }
    send(data) {
      if (!('batch' in bench.wire)) {
        const kind = typeOf(data);
        if (kind !== null) bench.wire[kind] ??= now();
      }
      return super.send(data);
    }
  };
  document.addEventListener('DOMContentLoaded', () => {
    const app = document.getElementById('app');
    const seen = () => { bench.states[app.dataset.state] ??= now(); };
    new MutationObserver(seen).observe(app, { attributes: true, attributeFilter: ['data-state'] });
    seen();
  });
})();"""


def _init_script(threads: int) -> str:
    """A phone with ``2 * threads`` cores (the page runs half of them as WASM threads), a Resource Timing buffer
    that keeps every entry, and :data:`_INSTRUMENTS`."""
    return (f"Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', {{get: () => {2 * threads}}});"
            f"performance.setResourceTimingBufferSize(100000);{_INSTRUMENTS}")


def _expected_backend(threads: int) -> str:
    return "WASM, single thread" if threads == 1 else f"WASM, {threads} threads"


# --- the server ----------------------------------------------------------------------------------------------------

@contextmanager
def web_server(out: Path, weights: str, cores: list[int]) -> Iterator[dict]:
    """``mobillm serve --web MODEL:WEIGHTS --no-auth`` on ``cores``, its jobs under out/jobs; yields its port and
    /device/config.json (the job template and the bundle's files). Stopped on the way out, whatever happens."""
    shutil.rmtree(out / "jobs", ignore_errors=True)
    port = free_port()
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mobillm", "serve", "--port", str(port), "--no-auth",
               "--jobs-dir", str(out / "jobs"), "--web", f"{MODEL}:{weights}"]
    with (out / "server.log").open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_pin(cores))
    try:
        try:
            wait_listening(port, server, timeout=600)
        except Exception as err:
            raise BenchError(f"mobillm serve --web did not start ({err}); its log: {out / 'server.log'}") from None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/device/config.json") as answer:
            config = json.load(answer)
        yield {"port": port, "config": config}
    finally:
        stop(server)


# --- the page ------------------------------------------------------------------------------------------------------

def _wait_for_first_batch(page, what: str, timeout: float = 900) -> dict:
    """Until the page has sent its first Batch message; returns ``window.mobillmBench`` (seconds, not ms)."""
    deadline = time.monotonic() + timeout
    while True:
        # evaluate(), not a locator: it waits for a main thread that a one-thread WASM run holds, a locator times out
        bench, state = page.evaluate(f"[window.mobillmBench, {_STATE}]")
        if "batch" in bench["wire"]:
            return {part: {k: ms / 1000 for k, ms in times.items()} for part, times in bench.items()}
        if state == "failed":
            raise BenchError(f"{what}: the page failed before its first batch: {page.text_content('#error')}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no Batch message within {timeout:.0f} s")
        page.wait_for_timeout(100)


def _until(page, expression: str, what: str, timeout: float = 60) -> None:
    """Poll ``expression`` in the page until it is true (``wait_for_function`` evaluates a string, which the page's
    CSP refuses; ``evaluate`` goes through the DevTools protocol)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        page.wait_for_timeout(100)


def _wait_for_job(page, what: str, stall: float = 3600, every: float = 30) -> None:
    """Until the page's job is done, a progress line every ``every`` seconds; fails on the page's error or when
    nothing moved for ``stall`` seconds."""
    last, moved, printed = None, time.monotonic(), time.monotonic()
    while (state := page.evaluate(_STATE)) not in ("done", "failed"):
        page.wait_for_timeout(1000)
        progress = page.evaluate(_PROGRESS)
        now = time.monotonic()
        if progress != last:
            last, moved = progress, now
        elif now - moved > stall:
            raise BenchError(f"{what}: the page made no progress for {stall:.0f} s ({progress[0]})")
        if now - printed >= every:
            stage, samples, step, eta = progress
            print(f"  {what}: samples {samples}, server step {step}, time left {eta} — {stage}", flush=True)
            printed = now
    if state == "failed":
        raise BenchError(f"{what}: the page failed: {page.text_content('#error')}")


def page_visit(playwright, profile: Path, port: int, job: str, data: Path, train_samples: int, threads: int,
               cores: list[int], *, whole_job: bool, bin_dir: Path) -> dict:
    """The device page opened in Chromium on ``profile`` (a persistent profile: its Cache Storage and HTTP cache
    survive to the next visit), the SST-2 files picked, the job started; until its first Batch message, or with
    ``whole_job`` until its end. Returns the seconds to the first batch, the bytes fetched, and for a whole job its
    summary and Chromium's peak memory."""
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=_pinned_chromium(bin_dir, cores), args=BROWSER_ARGS)
    try:
        context.add_init_script(_init_script(threads))
        page = context.pages[0] if context.pages else context.new_page()
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.goto(f"http://127.0.0.1:{port}/device#job={job}")
        page.wait_for_selector('#app[data-state="ready"]', timeout=120_000)
        backend, isolated = page.text_content("#backend"), page.evaluate("crossOriginIsolated")
        if backend != _expected_backend(threads):
            raise BenchError(f"{job}: the page chose {backend!r}, not {_expected_backend(threads)!r} "
                             f"(cross-origin isolated: {isolated})")
        page.check("#mode-split")
        for role in ("train", "dev", "test"):
            page.set_input_files(f"#{role}-file", str(data / f"{role}.tsv"))
        _until(page, "document.querySelector('#text-column').value === 'sentence'", "the page to read the files")
        page.fill("#max-train", str(train_samples))
        page.click("#start")
        timeline = _wait_for_first_batch(page, job)  # seconds since the navigation started
        visit = {"job": job, "backend": backend, "cross_origin_isolated": isolated, **timeline,
                 "webgpu": page.evaluate(_WEBGPU)}
        if whole_job:
            _wait_for_job(page, job)
            visit["summary"] = page.evaluate("window.mobillmResult.summary")
            visit["memory"] = chromium_memory(os.getpid())
        visit["downloads"] = download_bytes(page.evaluate(_RESOURCES))
        visit["page_errors"] = problems
        if problems:
            print(f"  {job}: the page logged {len(problems)} error(s), the first: {problems[0][:300]}", flush=True)
        return visit
    finally:
        context.close()


def page_rows(out: Path, port: int, data: Path, train_samples: int, threads: list[int],
              weights: str) -> tuple[list[dict], dict]:
    """Per thread count: a whole job from the page in a fresh profile (cold), then the same profile reopened for a
    second job up to its first batch (warm). Also what the browser says of WebGPU."""
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as playwright:
        for t in threads:
            cores, _ = core_plan(t)
            profile = out / f"profile-t{t}"
            shutil.rmtree(profile, ignore_errors=True)
            print(f"== page, {t} WASM thread(s), cores {cores}: a whole job, cold cache", flush=True)
            cold = page_visit(playwright, profile, port, f"page-t{t}", data, train_samples, t, cores, whole_job=True,
                              bin_dir=out / "bin")
            print(f"== page, {t} WASM thread(s): a second visit, warm cache, up to its first batch", flush=True)
            warm = page_visit(playwright, profile, port, f"page-warm-t{t}", data, train_samples, t, cores,
                              whole_job=False, bin_dir=out / "bin")
            shutil.rmtree(profile, ignore_errors=True)
            (out / f"page-t{t}.json").write_text(json.dumps({"cold": cold, "warm": warm}, indent=2) + "\n")
            rows.append(_page_row(t, weights, cold, warm))
            _print_row(rows[-1])
    return rows, cold["webgpu"]


#: the page row's timeline fields: name -> (part of window.mobillmBench, key)
_TIMELINE = {"model_loading": ("states", "loading-model"), "socket": ("wire", "socket"),
             "welcome": ("wire", "welcome"), "first_batch": ("wire", "batch")}


def _page_row(threads: int, weights: str, cold: dict, warm: dict) -> dict:
    """One row of the page at ``threads``: its cold visit's job, memory, timeline and downloads, the warm visit's
    timeline and downloads."""
    memory = cold["memory"]
    row = {**_summary_fields("page", threads, weights, cold["summary"]), "peak_mib": memory["renderer_peak_mib"],
           "chromium_peak_sum_mib": memory["chromium_peak_sum_mib"], "renderers": memory["renderers"],
           "backend": cold["backend"], "page_errors": len(cold["page_errors"]) + len(warm["page_errors"])}
    for name, visit in (("cold", cold), ("warm", warm)):
        for key, (part, event) in _TIMELINE.items():
            row[f"{key}_{name}_seconds"] = visit[part].get(event, float("nan"))
        for kind in ("bundle", "onnxruntime-web", "tokenizers", "page"):
            row[f"{kind}_bytes_{name}"] = visit["downloads"][kind]["transfer"]
    return row


# --- the other devices ---------------------------------------------------------------------------------------------

def run_child(command: list[str], cores: list[int], log: Path, threads: int) -> int:
    """Run ``command`` on ``cores`` with its output in ``log``; its peak RSS in bytes (``wait4``'s ``ru_maxrss``).
    Killed if this process is interrupted; a failure raises with the log's last lines."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as f:
        child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_pin(cores))
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BenchError(f"{' '.join(command[:4])}… failed (exit {child.returncode}); the end of {log}:\n{tail}")
    return usage.ru_maxrss * 1024


def _summary_fields(device: str, threads: int, weights: str, s: dict) -> dict:
    """The row fields every device's ``summary.json`` has (the page's, the native devices', ``mobillm train``'s)."""
    return {
        "device": device, "threads": threads, "weights": weights,
        "runtime": _RUNTIMES[device] + (f" r={s['train_config']['lora_r']}" if device == "lora" else ""),
        "n_train": s["n_train"], "n_test": s["n_test"], "seconds_per_sample": s["device_seconds_per_sample"],
        "test_accuracy": s["test"]["accuracy"],
        "zero_shot_test_accuracy": s["zero_shot_test"]["accuracy"] if "zero_shot_test" in s else None,
        "eval_agreement": s.get("eval_agreement"), "bytes_per_sample": s.get("bytes_per_sample"),
        "wall_seconds": s["wall_seconds"],
    }


def device_rows(kind: str, out: Path, port: int, bundle: Path, data: Path, train_samples: int, threads: list[int],
                weights: str, template: dict) -> list[dict]:
    """``python`` (mobillm device --runtime onnx), ``node`` (web/device.mjs) or ``lora`` (mobillm train --method
    lora) at each thread count, on the device's cores."""
    from mobillm.bench.models import device_checkpoint

    rows = []
    url = f"ws://127.0.0.1:{port}"
    for t in threads:
        cores, _ = core_plan(t)
        run = out / f"{kind}-t{t}"
        shutil.rmtree(run, ignore_errors=True)  # a job_state.json left there would resume an old job
        common = ["--data", str(data), "--max-train-samples", str(train_samples), "--output-dir", str(run)]
        if kind == "python":
            command = [sys.executable, "-m", "mobillm", "device", "--runtime", "onnx", "--bundle", str(bundle),
                       "--server", url, "--job", f"python-t{t}", "--threads", str(t), *common]
        elif kind == "node":
            command = ["node", str(WebFiles.checkout().src.parent / "device.mjs"), "--server", url, "--job", f"node-t{t}",
                       "--bundle", str(bundle), "--template", str(out / "template.json"), "--threads", str(t), *common]
        else:
            config, length = template["train_config"], template["data"]["max_length"]
            command = [sys.executable, "-m", "mobillm", "train", "--method", "lora",
                       "--model", str(device_checkpoint(MODEL, "fp32")), "--batch-size", str(config["batch_size"]),
                       "--max-length", str(length), "--seed", str(config["seed"]), "--epochs", "1",
                       "--evals-per-epoch", "1", "--patience", "1000", *common]
        print(f"== {kind}, {t} thread(s), cores {cores} (log: {run}.log)", flush=True)
        peak = run_child(command, cores, Path(f"{run}.log"), t)
        summary = json.loads((run / "summary.json").read_text())
        rows.append({**_summary_fields(kind, t, "fp32 checkpoint" if kind == "lora" else weights, summary),
                     "peak_mib": peak / 2**20})
        _print_row(rows[-1])
    return rows


# --- output --------------------------------------------------------------------------------------------------------

def _print_row(row: dict) -> None:
    print(f"  {row['device']}, {row['threads']} thread(s): {row['seconds_per_sample']:.4f} s/sample, peak "
          f"{row['peak_mib']:.0f} MiB, test accuracy {100 * row['test_accuracy']:.2f}% ({row['n_test']} sentences), "
          f"{row['wall_seconds']:.0f} s", flush=True)


def table(rows: list[dict], webgpu: dict | None) -> str:
    """The markdown tables: speed, memory and accuracy per device (÷ native: over the Python device's seconds at the
    same threads); the page's visits: when (seconds since the navigation started) it had read the data, loaded the
    model (its socket opened), had the server's Welcome and sent its first Batch, and the MiB it fetched."""
    native = {r["threads"]: r["seconds_per_sample"] for r in rows if r["device"] == "python"}
    percent = lambda x: "—" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = ["| device | runtime | threads | s/sample | ÷ native | peak MiB | Chromium Σ MiB | test acc | zero-shot "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['seconds_per_sample'] / native[r['threads']]:.2f}" if r["threads"] in native else "—"
        total = f"{r['chromium_peak_sum_mib']:.0f}" if "chromium_peak_sum_mib" in r else "—"
        lines.append(f"| {r['device']} | {r['runtime']} | {r['threads']} | {r['seconds_per_sample']:.4f} | {ratio} | "
                     f"{r['peak_mib']:.0f} | {total} | {percent(r['test_accuracy'])} | "
                     f"{percent(r['zero_shot_test_accuracy'])} | {r['wall_seconds']:.0f} |")
    pages = [r for r in rows if r["device"] == "page"]
    if pages:
        lines += ["", "| page | visit | data read s | model ready s | Welcome s | first Batch s | bundle MiB | "
                  "onnxruntime-web MiB | tokenizers MiB | page + modules MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in pages:
        for visit in ("cold", "warm"):
            times = (r[f"{key}_{visit}_seconds"] for key in ("model_loading", "socket", "welcome", "first_batch"))
            sizes = (r[f"{name}_bytes_{visit}"] / 2**20 for name in ("bundle", "onnxruntime-web", "tokenizers", "page"))
            lines.append(f"| {r['threads']} thread(s) | {visit} | " + " | ".join(f"{t:.1f}" for t in times) + " | "
                         + " | ".join(f"{m:.2f}" for m in sizes) + " |")
    if webgpu is not None:
        lines += ["", f"WebGPU: {describe_webgpu(webgpu)}"]
    return "\n".join(lines)


def describe_webgpu(webgpu: dict) -> str:
    if not webgpu["api"]:
        return "not available in this browser (no navigator.gpu): not measured"
    if not webgpu["adapter"]:
        return "navigator.gpu is there but gives no adapter (no GPU): not measured"
    return "available, not measured: the page runs ONNX Runtime's WASM build only"


def plot(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 0.5 * len(rows) + 1.6), sharey=True)
    labels = [f"{r['device']}, {r['threads']}t" for r in rows]
    speed.barh(labels, [r["seconds_per_sample"] for r in rows])
    speed.set_xlabel("seconds per training sample")
    speed.invert_yaxis()
    memory.barh(labels, [r["peak_mib"] for r in rows])
    memory.set_xlabel("peak memory (MiB; page: its renderer)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the benchmark -------------------------------------------------------------------------------------------------

def check_prerequisites(devices: list[str]) -> None:
    """Refuse to start, naming what to install, when a device's tools are missing."""
    problems = []
    if "page" in devices:
        if not Path(CHROMIUM).is_file():
            problems.append(f"{CHROMIUM} is not there: install Debian's chromium (`make browser`, or apt-get install "
                            "chromium), or name another build in $MOBILLM_CHROMIUM")
        if importlib.util.find_spec("playwright") is None:
            problems.append("Python Playwright is not installed: pip install -e '.[dev]' (it drives that Chromium; "
                            "never `playwright install`)")
    libraries = WebFiles.checkout().node_modules
    if {"page", "node"} & set(devices) and not (libraries / "onnxruntime-web").is_dir():
        problems.append(f"the web device's libraries are missing from {libraries}: `npm ci` in web/ "
                        "(or `make setup`)")
    if "node" in devices and shutil.which("node") is None:
        problems.append("node is not on PATH (the node device runs web/device.mjs)")
    if problems:
        raise SystemExit("mobillm bench web cannot run:\n  - " + "\n  - ".join(problems))


def data_folder(directory: Path, sst2: Path, eval_rows: int, test_rows: int) -> Path:
    """SST-2 as every device reads it: train.tsv whole, dev.tsv its first ``eval_rows`` rows (the validation a device
    sends first and scores again at the end; the page cannot cap it), test.tsv its first ``test_rows``. Copies, not
    files, not links to SST-2's: a run's folder stands on its own."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", None), ("dev", eval_rows), ("test", test_rows)):
        lines = (sst2 / f"{name}.tsv").read_text().splitlines()
        (directory / f"{name}.tsv").unlink(missing_ok=True)  # a link an older run left
        (directory / f"{name}.tsv").write_text("\n".join(lines if rows is None else lines[: rows + 1]) + "\n")
    return directory


def run(args: argparse.Namespace, devices: list[str]) -> tuple[list[dict], dict]:
    """Every device's rows against one server, in the order python, node, page, lora (the native device first: the
    server loads its model for its first job, which the page's cold visit would otherwise wait for); the metadata."""
    import logging

    from mobillm import PROGRESS_LOGGER
    from mobillm.recipes.job_bundle import job_bundle

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = data_folder(out / "data", require_sst2(), args.eval_samples, args.test_samples)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    print(f"== the {args.weights} bundle of {MODEL} (exported into the bundle cache once)", flush=True)
    bundle = job_bundle(MODEL, None, args.weights)
    _, server_cores = core_plan(1)
    rows: list[dict] = []
    webgpu = None
    started = time.perf_counter()
    print(f"== mobillm serve --web {MODEL}:{args.weights} on core(s) {server_cores} (log: {out / 'server.log'})",
          flush=True)
    with web_server(out, args.weights, server_cores) as server:
        config = server["config"]
        template = config["template"]
        (out / "template.json").write_text(json.dumps(template, indent=2) + "\n")
        for kind in (d for d in ("python", "node", "page", "lora") if d in devices):
            if kind == "page":
                page, webgpu = page_rows(out, server["port"], data, args.train_samples, args.threads, args.weights)
                rows += page
            else:
                rows += device_rows(kind, out, server["port"], bundle, data, args.train_samples, args.threads,
                                    args.weights, template)
    meta = dict(machine=machine(), model=MODEL, weights=args.weights, bundle=str(bundle),
                bundle_files_bytes=sum(f["size"] for f in config["bundle"]["files"].values()),
                train_samples=args.train_samples, eval_samples=args.eval_samples, test_samples=args.test_samples,
                batch_size=template["train_config"]["batch_size"], max_length=template["data"]["max_length"],
                cores={t: core_plan(t)[0] for t in args.threads}, server_cores=server_cores,
                chromium=_chromium_version() if "page" in devices else None,
                webgpu=None if webgpu is None else {**webgpu, "note": describe_webgpu(webgpu)},
                wall_seconds=time.perf_counter() - started)
    return rows, meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm bench web", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 training, 32 validation, 64 test sentences")
    parser.add_argument("--train-samples", type=int, default=2000, help="the job's training sentences (SST-2 subset)")
    parser.add_argument("--eval-samples", type=int, default=256, help="validation sentences (SST-2 dev, first rows)")
    parser.add_argument("--test-samples", type=int, default=872, help="test sentences scored (SST-2 test: 872)")
    parser.add_argument("--threads", type=number_list(int), default=[1, 2], help="comma-separated thread counts")
    parser.add_argument("--weights", default=WEB_BUNDLE_WEIGHTS,
                        help="the bundle's weight format (mobillm export --weights; default: serve --web's)")
    parser.add_argument("--devices", default=",".join(DEFAULT_DEVICES),
                        help=f"comma-separated, of {','.join(DEVICES)} (default {','.join(DEFAULT_DEVICES)})")
    parser.add_argument("--out", type=Path, default=results_dir("web"))
    args = parser.parse_args(argv)
    from mobillm.bundle.config import WEIGHT_FORMATS

    if args.quick:
        args.train_samples, args.eval_samples, args.test_samples = 64, 32, 64
    devices = [d for d in args.devices.split(",") if d]
    if unknown := sorted(set(devices) - set(DEVICES)):
        parser.error(f"--devices: unknown {', '.join(unknown)}; choose from {', '.join(DEVICES)}")
    if args.weights not in WEIGHT_FORMATS:
        parser.error(f"--weights {args.weights!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    if "page" in devices and not all(1 <= t <= MAX_PAGE_THREADS for t in args.threads):
        parser.error(f"--threads: the page runs 1 to {MAX_PAGE_THREADS} WASM threads")
    if max(args.threads) > len(os.sched_getaffinity(0)):
        print(f"note: {max(args.threads)} threads on {len(os.sched_getaffinity(0))} cores", flush=True)
    check_prerequisites(devices)
    # a SIGTERM (timeout, kill) unwinds like Ctrl-C: the server, the browser and a running device are stopped
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        rows, meta = run(args, devices)
    except BenchError as err:
        raise SystemExit(f"mobillm bench web: {err}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_rows(args.out, rows, **meta)
    plot(rows, args.out / "web.png", f"{MODEL}, {args.weights} bundle, SST-2: {args.train_samples} training "
                                     f"sentences; {meta['machine']}")
    print(f"\nmachine: {meta['machine']}; {MODEL} {args.weights} bundle ({meta['bundle_files_bytes'] / 2**20:.1f} MiB "
          f"of files), SST-2: {args.train_samples} training, {args.eval_samples} validation, {args.test_samples} test "
          "sentences\n")
    print(table(rows, meta["webgpu"]))


def _chromium_version() -> str | None:
    try:
        done = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


if __name__ == "__main__":
    main()
