"""The benchmarks' own machinery: the shaped link's rate, one memory measurement on a tiny model, the codecs table."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import save_tiny_model

from mobillm.bench.link import CHUNK, TokenBucket, serve_link
from mobillm.ports import free_port


def test_token_bucket_paces_to_its_rate():
    bucket = TokenBucket(rate=1000.0, burst=100)
    assert bucket.delay(100, now=0.0) == 0.0  # the burst is there at once
    assert bucket.delay(500, now=0.0) == pytest.approx(0.5)  # then 500 bytes take 0.5 s
    assert bucket.delay(100, now=10.0) == 0.0  # refilled, but never beyond the burst
    assert bucket.delay(150, now=10.0) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)


def test_shaped_link_forwards_everything_at_the_set_rate():
    """1 MB through a 40 Mbps (5 MB/s) link arrives whole and takes at least (1 MB - burst) / rate."""
    payload = bytes(range(256)) * 4096
    received = bytearray()

    async def scenario() -> float:
        async def sink(reader, writer):
            while data := await reader.read(1 << 16):
                received.extend(data)
            writer.close()

        target = await asyncio.start_server(sink, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        ready = asyncio.Event()
        link_port = free_port()
        link = asyncio.create_task(serve_link(link_port, target_port, 40, ready=ready.set))
        await ready.wait()
        _, writer = await asyncio.open_connection("127.0.0.1", link_port)
        started = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        writer.close()
        while len(received) < len(payload):
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        link.cancel()
        target.close()
        return elapsed

    elapsed = asyncio.run(scenario())
    assert bytes(received) == payload
    assert elapsed >= (len(payload) - CHUNK) / 5e6 * 0.95
    assert elapsed < 5.0  # and not absurdly slower than the rate


def test_memory_measurement_of_an_int8_device(tmp_path):
    from mobillm.backbone import load_pretrained
    from mobillm.backbone.weights import save_device_model
    from mobillm.bench.memory import measure

    model, tokenizer = load_pretrained(str(save_tiny_model(tmp_path / "tiny")))
    save_device_model(model, tokenizer, tmp_path / "int8", "int8", source="tiny")
    row = measure("tiny", "mobillm-int8", batch=2, length=8, warmup=True, steps=1, source=str(tmp_path / "int8"), threads=1)
    assert row["weights"] == "int8" and row["batch"] == 2
    assert row["peak_mib"] >= row["rss_after_load_mib"] >= row["rss_after_imports_mib"] > 0
    assert row["seconds_per_sample"] > 0


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """An fp32 bundle of the tiny Llama, shortcuts 1 and 2."""
    from conftest import tiny_model
    from helpers import make_tiny_tokenizer

    from mobillm.export import export_bundle

    directory = tmp_path_factory.mktemp("bundle")
    export_bundle(tiny_model("llama"), make_tiny_tokenizer(), directory, [1, 2], "fp32", source="tiny")
    return directory


def test_memory_measurement_of_a_bundle_device_never_imports_torch(tiny_bundle):
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mobillm.bench.memory", "--one", "tiny", "bundle-fp32", "2", "8",
                           "1", "1", str(tiny_bundle), "1"], capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["weights"] == "fp32" and row["threads"] == 1
    assert row["torch_imported"] is False
    assert row["peak_mib"] >= row["rss_after_load_mib"] >= row["rss_after_imports_mib"] > 0


def test_a_random_benchmark_model_without_a_tokenizer_gets_a_bundle_for_memory(tmp_path, monkeypatch):
    """``opt-1.3b`` is random and has no tokenizer: its bench bundle holds the placeholder one, OPT's special ids,
    and the memory step runs on it (here with a tiny OPT in its place)."""
    import json

    from conftest import tiny_model

    from mobillm.bench import models
    from mobillm.bench.memory import measure
    from mobillm.bundle.config import GENERATE_NAME, BundleConfig

    monkeypatch.setattr(models, "opt_1_3b", lambda: tiny_model("opt"))
    monkeypatch.setattr(models, "results_dir", lambda name: tmp_path / name)
    monkeypatch.setattr(models.subprocess, "run", lambda cmd, **kw: (
        models._export(*cmd[4:8]) if cmd[3] == "bundle" else models._convert(*cmd[3:6])))
    path = models.device_bundle("opt-1.3b", "int8-dynamic")
    config = BundleConfig.load(path)
    assert (config.model_type, config.weights, config.pad_token_id, config.eos_token_ids) == ("opt", "int8-dynamic", 1, [2])
    assert json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]["<pad>"] == 1
    assert not (path / GENERATE_NAME).exists()  # bench bundles classify only
    row = measure("opt-1.3b", "bundle-int8-dynamic", batch=2, length=8, warmup=False, steps=1, source=str(path), threads=1)
    assert row["peak_mib"] >= row["rss_after_load_mib"] > 0 and row["seconds_per_sample"] > 0


def test_benchmark_checkpoints_are_converted_into_place_in_one_rename(tmp_path, monkeypatch):
    """Two benchmarks started side by side both convert the missing checkpoint: each writes its own directory and
    the first rename wins, so neither ever sees a half-written one; what an interrupted conversion left (no
    ``device_weights.json``) is replaced, not trusted; a conversion that fails leaves nothing behind."""
    from pathlib import Path

    from mobillm.bench import models

    monkeypatch.setattr(models, "results_dir", lambda name: tmp_path / name)
    path = tmp_path / "checkpoints" / "smollm2-135m-fp32"
    writes = []

    def convert(cmd, **kw):  # the child process: writes the checkpoint into the directory it is given
        out = Path(cmd[-1])
        assert out != path and out.parent == path.parent  # never into the final place
        out.mkdir(parents=True)
        (out / "device_weights.json").write_text(str(len(writes)))
        writes.append(out)
        if len(writes) == 1:  # a second benchmark converts (and renames) while the first one is still converting
            assert models.device_checkpoint("smollm2-135m", "fp32") == path

    monkeypatch.setattr(models.subprocess, "run", convert)
    path.mkdir(parents=True)
    (path / "half-written.safetensors").write_text("")  # an interrupted conversion's leftover
    assert models.device_checkpoint("smollm2-135m", "fp32") == path
    assert len(writes) == 2 and (path / "device_weights.json").read_text() == "1"  # the first rename won
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no leftover and no copy of the loser

    def fail(cmd, **kw):  # a conversion that dies half-way leaves nothing behind
        Path(cmd[-1]).mkdir(parents=True)
        raise models.subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(models.subprocess, "run", fail)
    with pytest.raises(models.subprocess.CalledProcessError):
        models.device_checkpoint("smollm2-135m", "int8")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_the_codecs_benchmarks_bundle_backbone_taps_what_the_torch_device_taps(tiny_bundle):
    import torch
    from conftest import tiny_model

    from mobillm.bench.codecs import BundleBackbone
    from mobillm.device.taps import TappedBackbone
    from mobillm.wire.codecs import get_codec

    ids = torch.randint(4, 30, (3, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    keep = mask.bool()
    torch_device, onnx_device = TappedBackbone(tiny_model("llama"), [1, 2]), BundleBackbone(tiny_bundle)
    want, got = (b(ids, mask, None, get_codec("none").encode, keep_top=keep) for b in (torch_device, onnx_device))
    assert len(got) == 2
    codec = get_codec("none")
    for w, g in zip(want, got):
        assert g["shape"].tolist() == [3, 6, torch_device.decoder.config.hidden_size]
        torch.testing.assert_close(codec.decode(g)[keep], codec.decode(w)[keep], atol=1e-5, rtol=1e-4)
    assert onnx_device.kept_top.shape[0] == int(keep.sum())
    torch.testing.assert_close(onnx_device.kept_top, torch_device.kept_top, atol=1e-5, rtol=1e-4)


def test_codecs_table_compares_each_seed_with_its_own_none_and_summarises_over_seeds(tmp_path, capsys):
    from mobillm.bench.codecs import _plot, _table

    def row(codec, seed, acc):
        return {"weights": "fp32", "codec": codec, "seed": seed, "test_accuracy": acc, "best_val_accuracy": acc,
                "bytes_per_sample": {"none": 400.0, "fp16": 200.0, "nf4": 56.0}[codec], "pivot_bytes_per_sample": 5.6,
                "mean_padded_length": 10.0}

    rows = [row("none", 0, 0.80), row("fp16", 0, 0.81), row("nf4", 0, 0.78),
            row("none", 1, 0.84), row("fp16", 1, 0.83), row("nf4", 1, 0.84)]
    _table(rows, "attention")
    out = capsys.readouterr().out
    assert "| fp32 | nf4 | 0 | 78.00% | -2.00 |" in out  # against seed 0's none, not seed 1's
    assert "| fp32 | nf4 | 1 | 84.00% | +0.00 |" in out
    assert "| fp32 | nf4 | 2 | 81.00% | 78.00–84.00% | -1.00 |" in out  # mean 81 against none's mean 82
    assert "| 0.28 |" in out  # nf4 bytes ÷ fp16 bytes
    _plot(rows, tmp_path / "codecs.png", "SST-2")
    assert (tmp_path / "codecs.png").stat().st_size > 1000


def test_codecs_rejects_seeds_that_are_not_integers(capsys):
    from mobillm.bench.codecs import main

    with pytest.raises(SystemExit) as exc:
        main(["--seeds", "0,one"])
    assert exc.value.code == 2 and "argument --seeds: takes comma-separated integers" in capsys.readouterr().err


def test_number_list_parses_and_rejects_comma_separated_numbers():
    import argparse

    from mobillm.bench.io import number_list

    assert number_list(int)("8,16,32") == [8, 16, 32]
    assert number_list(float)("10,60.5") == [10.0, 60.5]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        number_list(int)("8,x")
    with pytest.raises(SystemExit):  # a usage error of the benchmark's CLI, before any work
        from mobillm.bench.memory import main

        main(["--batches", "8,sixteen"])


def test_samples_subsets_are_whole_batches_nested_and_seeded():
    from types import SimpleNamespace

    from mobillm.bench.samples import nested_subsets

    train = [SimpleNamespace(batch=[0] * (16 if i < 10 else 7), i=i) for i in range(11)]  # the last one partial
    small, middle, large = nested_subsets(train, [64, 32, 1000, 2000], seed=0)
    assert [len(small), len(middle), len(large)] == [2, 4, 10]  # 1000 and 2000: more than there are, all 10 whole
    assert {b.i for b in small} <= {b.i for b in middle} <= {b.i for b in large} and 10 not in {b.i for b in large}
    assert nested_subsets(train, [32], seed=0)[0] == small
    assert any(nested_subsets(train, [48], seed=s)[0] != nested_subsets(train, [48], seed=0)[0] for s in (1, 2, 3))


def test_samples_bench_curves_side_and_lora_on_a_tiny_model(tmp_path, capsys):
    import json

    from conftest import write_toy_sentiment

    from mobillm.bench.samples import main

    model = save_tiny_model(tmp_path / "tiny")
    data = write_toy_sentiment(tmp_path / "toy", n_train=96, n_eval=32)
    main(["--model", str(model), "--data", str(data), "--n", "32,64", "--seeds", "0,1", "--side-epochs", "1,2",
          "--lora-epochs", "1", "--eval-samples", "32", "--test-samples", "24", "--block", "mlp", "--variants", "default,lst",
          "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert sorted({(r["method"], r["n"]) for r in rows}) == [("LoRA 1 ep", 32), ("LoRA 1 ep", 64), ("side (default)", 32),
                                                               ("side (default)", 64), ("side (lst)", 32), ("side (lst)", 64)]
    assert len(rows) == 12 and {r["seed"] for r in rows} == {0, 1}
    side = [r for r in rows if r["method"] == "side (default)"]
    # the budget kept is the one with the best validation accuracy
    assert all(r["best_val_accuracy"] == max(r["candidates_val"].values()) and r["epochs"] in (1, 2) for r in side)
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)
    out = capsys.readouterr().out
    assert "| toy | side (default) | 64 | 2 |" in out
    assert (tmp_path / "out" / "accuracy_vs_n.png").stat().st_size > 1000

    # LoRA alone at one N (nothing forwarded, only batched) trains on the same samples: the same figures
    main(["--model", str(model), "--data", str(data), "--n", "32,64", "--seeds", "0", "--lora-n", "64", "--lora-epochs", "1",
          "--eval-samples", "32", "--test-samples", "24", "--block", "mlp", "--variants", "none", "--out", str(tmp_path / "lora")])
    alone = json.loads((tmp_path / "lora" / "results.json").read_text())["rows"]
    both = [r for r in rows if r["method"] == "LoRA 1 ep" and r["n"] == 64 and r["seed"] == 0]
    assert [(r["method"], r["n"], r["zero_shot_test"]) for r in alone] == [("LoRA 1 ep", 64, None)]
    assert (alone[0]["test_accuracy"], alone[0]["best_val_accuracy"]) == (both[0]["test_accuracy"], both[0]["best_val_accuracy"])
    capsys.readouterr()
    main(["--merge", f"{tmp_path / 'out'},{tmp_path / 'lora'}", "--out", str(tmp_path / "merged")])
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())["rows"]
    assert len(merged) == len(rows) + 1 and "| toy | LoRA 1 ep | 64 | 3 |" in capsys.readouterr().out
    main(["--model", str(model), "--data", str(data), "--n", "32,64", "--seeds", "0", "--side-n", "64", "--side-epochs", "1",
          "--lora-epochs", "0", "--eval-samples", "32", "--test-samples", "24", "--block", "mlp", "--out", str(tmp_path / "side")])
    side_only = json.loads((tmp_path / "side" / "results.json").read_text())["rows"]
    assert [(r["method"], r["n"]) for r in side_only] == [("side (default)", 64)]
    # more shortcut layers: a row of their own, named with them, and the bytes per sample they cost
    main(["--model", str(model), "--data", str(data), "--n", "32,64", "--seeds", "0", "--side-n", "64", "--side-epochs", "1",
          "--lora-epochs", "0", "--eval-samples", "32", "--test-samples", "24", "--block", "mlp", "--shortcuts", "1,2,3,4",
          "--out", str(tmp_path / "taps")])
    [taps] = json.loads((tmp_path / "taps" / "results.json").read_text())["rows"]
    assert (taps["method"], taps["shortcuts"]) == ("side (default, taps 1,2,3,4)", [1, 2, 3, 4])
    per_layer = [r["bytes_per_sample"] / len(r["shortcuts"]) for r in (taps, side_only[0])]
    assert len(side_only[0]["shortcuts"]) < 4 and per_layer[0] == pytest.approx(per_layer[1], rel=0.05)
    for flag in ("--lora-n", "--side-n"):
        with pytest.raises(SystemExit):
            main(["--n", "32,64", flag, "128", "--out", str(tmp_path / "bad")])


def test_samples_taps_are_written_once_and_read_back_by_a_later_run(tmp_path, monkeypatch):
    import json

    from conftest import write_toy_sentiment

    import mobillm.device.inference
    from mobillm.bench.samples import main

    model = save_tiny_model(tmp_path / "tiny")
    data = write_toy_sentiment(tmp_path / "toy", n_train=64, n_eval=32)
    args = ["--model", str(model), "--data", str(data), "--n", "32,64", "--seeds", "0", "--side-epochs", "2", "--lora-epochs", "0",
            "--eval-samples", "32", "--test-samples", "24", "--variants", "default,ema", "--taps", str(tmp_path / "taps")]
    main([*args, "--out", str(tmp_path / "first")])
    assert sorted(p.name for p in (tmp_path / "taps" / "toy").iterdir()) == ["test.safetensors", "train.safetensors",
                                                                              "validation.safetensors"]

    def no_device_pass(*a, **k):
        raise AssertionError("the second run forwarded the backbone")

    monkeypatch.setattr(mobillm.device.inference, "tap_split", no_device_pass)
    main([*args, "--out", str(tmp_path / "second")])
    first, second = (json.loads((tmp_path / run / "results.json").read_text())["rows"] for run in ("first", "second"))
    keep = ("method", "n", "test_accuracy", "best_val_accuracy", "zero_shot_test", "bytes_per_sample")
    assert [{k: r[k] for k in keep} for r in second] == [{k: r[k] for k in keep} for r in first] and len(first) == 4
    # the power EMA is a variant of its own: trained on the same taps, it is not the default's network
    ema, default = ([r for r in first if r["method"] == f"side ({v})"] for v in ("ema", "default"))
    assert [r["n"] for r in ema] == [32, 64] and [r["n"] for r in default] == [32, 64]
    with pytest.raises(SystemExit, match="--taps"):  # other settings never read these taps
        main([*args[:-1], str(tmp_path / "taps"), "--codec", "int8", "--out", str(tmp_path / "third")])


def test_samples_ensemble_variant_averages_its_members_probabilities(tmp_path):
    import json

    from conftest import write_toy_sentiment

    from mobillm.bench import samples

    model = save_tiny_model(tmp_path / "tiny")
    data = write_toy_sentiment(tmp_path / "toy", n_train=64, n_eval=32)
    samples.main(["--model", str(model), "--data", str(data), "--n", "32,64", "--side-n", "64", "--seeds", "0",
                  "--side-epochs", "1", "--lora-epochs", "0", "--eval-samples", "32", "--test-samples", "24",
                  "--variants", "single,single*2", "--taps", str(tmp_path / "taps"), "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["side (single)", "side (single*2)"]
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)
    for bad in ("default*1", "default*x", "nope*2"):
        with pytest.raises(SystemExit):
            samples.main(["--variants", bad, "--out", str(tmp_path / "bad")])

    # the ensemble's prediction is the mean of its members' probabilities (a SideConfig.members ensemble of them)
    from types import SimpleNamespace

    import torch

    from mobillm.backbone import FrozenHead
    from mobillm.bench.samples import ensemble_scores
    from mobillm.sidenet import SideConfig, SideNetwork

    config = SideConfig(hidden_size=8, num_backbone_layers=2, shortcuts=[2], width=4, block="mlp", num_labels=2,
                        label_token_ids=[0, 1])
    torch.manual_seed(0)
    members = [SideNetwork(config) for _ in range(3)]
    for member in members:
        for param in member.parameters():
            torch.nn.init.normal_(param, std=1.0)
    head = FrozenHead(torch.nn.RMSNorm(8), torch.nn.Linear(8, 3, bias=False))
    acts, labels = torch.randn(64, 1, 8), torch.randint(0, 2, (64,))
    with torch.no_grad():
        each = [m(acts, head).softmax(-1) for m in members]
    mean_pred = (sum(each) / 3).argmax(-1)
    assert any(bool((p.argmax(-1) != mean_pred).any()) for p in each)  # the mean is not just one member's vote
    batch = SimpleNamespace(labels=labels, sample_ids=torch.arange(64), attention_mask=None, last_index=None,
                            loss_mask=None)
    tapped = [SimpleNamespace(batch=batch, taps=[{"x": acts}])]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mobillm.device.inference.decode_layers", lambda codec, taps: taps[0]["x"])
        scored = ensemble_scores(members, head, None, tapped, tapped)
    expected = float((mean_pred == labels).float().mean())
    assert scored["best_val_accuracy"] == pytest.approx(expected) and scored["test"]["accuracy"] == pytest.approx(expected)


def test_interleaved_timing_runs_every_method_in_one_process(tmp_path, tiny_bundle):
    from mobillm.backbone import load_pretrained
    from mobillm.backbone.weights import save_device_model
    from mobillm.bench.memory import interleaved

    model, tokenizer = load_pretrained(str(save_tiny_model(tmp_path / "tiny")))
    save_device_model(model, tokenizer, tmp_path / "fp32", "fp32", source="tiny")
    sources = {"mobillm": str(tmp_path / "fp32"), "lora": str(tmp_path / "fp32"), "bundle-fp32": str(tiny_bundle)}
    speed = interleaved(list(sources), sources, batch=2, length=8, rounds=2, threads=1)
    assert list(speed) == ["mobillm", "lora", "bundle-fp32"] and all(s > 0 for s in speed.values())


def test_convergence_names_each_split_arms_device_runtime(monkeypatch, tmp_path):
    """The torch arms say --runtime torch (mobillm device defaults to ONNX Runtime), the ONNX arm its bundle."""
    from mobillm.bench import convergence

    monkeypatch.setattr(convergence, "device_bundle", lambda model, weights: tmp_path / f"{model}-{weights}")
    assert convergence.device_options("cache", 4, "fp32") == ("--idle-replays", "0", "--runtime", "torch")
    assert convergence.device_options("replay", 4, "fp32") == ("--idle-replays", "4", "--runtime", "torch")
    assert convergence.device_options("cache-onnx", 4, "int8-dynamic") == (
        "--idle-replays", "0", "--runtime", "onnx", "--bundle", str(tmp_path / "smollm2-135m-int8-dynamic"))


def test_web_bench_finds_processes_under_it_and_their_peak_memory_in_proc():
    """`mobillm bench web`'s /proc readers on processes of known shape: a child with a grandchild, and two stand-ins
    for Chromium (argv[0] `chromium`, one a `--type=renderer`) that hold different amounts of memory."""
    import os
    import subprocess
    import sys

    from mobillm.bench.web import chromium_memory, cmdline, cpu_seconds, descendants

    sleeper = "import time; time.sleep(60)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {sleeper!r}]); {sleeper}"
    hold = "b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); print(flush=True); " + sleeper
    as_chromium = f"exec -a chromium {sys.executable} -c"  # argv[0] "chromium", as Chromium's processes show it
    children = [
        subprocess.Popen([sys.executable, "-c", parent]),
        subprocess.Popen(["bash", "-c", f'{as_chromium} "{hold}" --type=renderer'], stdout=subprocess.PIPE),
        subprocess.Popen(["bash", "-c", f'{as_chromium} "{sleeper}" --type=gpu-process']),
    ]
    try:
        children[1].stdout.readline()  # the renderer stand-in holds its 64 MiB
        deadline = time.monotonic() + 10
        while len(descendants(os.getpid())) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        found = descendants(os.getpid())
        assert {c.pid for c in children} <= set(found) and len(found) >= 4  # and the grandchild
        assert cmdline(children[1].pid)[0] == "chromium" and "--type=renderer" in cmdline(children[1].pid)
        assert cpu_seconds(children[1].pid) >= 0
        memory = chromium_memory(os.getpid())
        assert memory["renderer_pid"] == children[1].pid and memory["renderers"] == 1
        assert memory["chromium_processes"] == 2
        assert 64 <= memory["renderer_peak_mib"] < memory["chromium_peak_sum_mib"]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert cmdline(children[0].pid) == []  # gone: nothing to read


def test_web_bench_sums_the_pages_downloads_by_kind_and_cuts_sst2_to_size(tmp_path):
    from mobillm.bench.web import data_folder, download_bytes

    site = "http://127.0.0.1:1"
    entries = [{"name": f"{site}{path}", "transferSize": wire, "encodedBodySize": body} for path, wire, body in (
        ("/device", 10, 8), ("/device/src/a.mjs", 5, 4), ("/device/bundle/abc/taps.onnx", 100, 90),
        ("/device/vendor/onnxruntime-web/x.wasm", 0, 7), ("/jobs/a/auth", 3, 2))]
    got = download_bytes(entries)
    assert got["page"] == {"transfer": 15, "body": 12, "requests": 2}
    assert got["bundle"] == {"transfer": 100, "body": 90, "requests": 1}
    assert got["onnxruntime-web"] == {"transfer": 0, "body": 7, "requests": 1}  # from the browser's HTTP cache
    assert got["tokenizers"]["requests"] == 0 and got["other"]["transfer"] == 3

    sst2 = tmp_path / "sst2"
    sst2.mkdir()
    for name, rows in (("train", 10), ("dev", 10), ("test", 10)):
        (sst2 / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{name} {i}\t{i % 2}\n" for i in range(rows)))
    data = data_folder(tmp_path / "data", sst2, eval_rows=3, test_rows=4)
    assert (data / "train.tsv").read_text() == (sst2 / "train.tsv").read_text()
    assert len((data / "dev.tsv").read_text().splitlines()) == 1 + 3
    assert len((data / "test.tsv").read_text().splitlines()) == 1 + 4
