"""The JavaScript device (``web/device.mjs``, Node) runs whole jobs against a real server: it finishes, its local
predictions equal the Python bundle runtime's on the side network it downloaded, its batches carry what the Python
bundle device's carry, no text or token id crosses the wire, and a connection cut mid-job resumes with nothing lost,
as does a device process killed mid-job and started again on its output directory.

The server runs on a thread of this process (so the capture sees every message at its protocol layer), with a
token per job that the Node device presents as a WebSocket subprotocol, as a browser must.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model
from helpers import make_tiny_tokenizer
from safetensors.numpy import load_file
from servers import CuttingProxy, StallingProxy, ThreadServer, kill_when_stalled
from test_wire_capture import MIN_RUN, SECRET_WORDS, TEMPLATE_WORDS, Capture, leaks
from webjs import WEB, node

from mobillm.bundle.config import BundleConfig
from mobillm.data import load_dataset
from mobillm.export import export_bundle
from mobillm.files import JOB_STATE_NAME
from mobillm.recipes.bundle_infer import BundleInference
from mobillm.recipes.job_template import job_template
from mobillm.recipes.options import SideOptions
from mobillm.server.auth import TokenStore
from mobillm.server.manager import SessionManager
from mobillm.train_config import TrainConfig
from mobillm.wire.messages import Batch, decode_message
from mobillm.wire.np_codecs import get_np_codec

SHORTCUTS = [2, 4]
BATCH = 8
#: |difference| of the two runtimes' label logits is ~1e-6 (taps within 1e-5); a prediction is compared where the
#: Python margin between the two classes exceeds this
MARGIN = 1e-4


def _secret_task(root: Path, family: str) -> tuple[Path, Path, Path, list[str]]:
    """A tiny model whose tokenizer knows the secret words, its fp32 bundle, and a task written in those words
    (the label follows a word of each half of the list, so the side network has something to learn)."""
    model_dir, bundle_dir, data_dir = root / "model", root / "bundle", root / "data"
    model = tiny_model(family, layers=4, hidden=64)
    model.save_pretrained(model_dir)
    tokenizer = make_tiny_tokenizer(words=TEMPLATE_WORDS + SECRET_WORDS, bos=family == "llama")
    tokenizer.save_pretrained(model_dir)
    export_bundle(model, tokenizer, bundle_dir, SHORTCUTS, source=str(model_dir), generate=False)
    rng = random.Random(0)
    data_dir.mkdir()
    texts = []
    for split, n in (("train", 64), ("dev", 16), ("test", 24)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            words = rng.sample(SECRET_WORDS, 5) + [SECRET_WORDS[label * 6 + rng.randrange(6)]]
            rng.shuffle(words)
            text = " ".join(words)
            texts.append(text)
            rows.append(f"{text}\t{label}")
        (data_dir / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return model_dir, bundle_dir, data_dir, texts


def _template(bundle_dir: Path, path: Path, codec: str, **train) -> Path:
    options = SideOptions(codec=codec, width=16, max_eval_samples=16)
    config = TrainConfig(method="side", epochs=2, batch_size=BATCH, patience=5, **train)
    path.write_text(json.dumps(job_template(BundleConfig.load(bundle_dir), options, 1, config)))
    return path


def _node_args(port: int, job: str, token: str, bundle_dir: Path, template: Path, data_dir: Path, out: Path,
               *extra: str) -> list[str]:
    return [node(), str(WEB / "device.mjs"), "--server", f"ws://127.0.0.1:{port}", "--job", job, "--token", token,
            "--bundle", str(bundle_dir), "--template", str(template), "--data", str(data_dir), "--output-dir", str(out),
            *extra]


def _run_node(port: int, job: str, token: str, bundle_dir: Path, template: Path, data_dir: Path, out: Path,
              *extra: str, code: int = 0) -> dict | str:
    """Run the Node device to its end: its summary, or for an expected exit ``code`` other than 0 its stderr."""
    proc = subprocess.run(_node_args(port, job, token, bundle_dir, template, data_dir, out, *extra),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stderr[-4000:]
    return json.loads((out / "summary.json").read_text()) if code == 0 else proc.stderr


@pytest.fixture(scope="module", params=[("llama", "nf4"), ("opt", "int8")], ids=["llama-nf4", "opt-int8"])
def web_job(request, tmp_path_factory):
    """One whole Node job per family against a thread server, every message captured at the server."""
    family, codec = request.param
    root = tmp_path_factory.mktemp(f"web-{family}")
    model_dir, bundle_dir, data_dir, texts = _secret_task(root, family)
    template = _template(bundle_dir, root / "template.json", codec)
    tokens = TokenStore(root / "jobs")
    token = tokens.create("web")
    monkeypatch = pytest.MonkeyPatch()
    capture = Capture(monkeypatch)
    manager = SessionManager(root / "jobs")
    server = ThreadServer(manager, window=4, tokens=tokens)
    try:
        summary = _run_node(server.port, "web", token, bundle_dir, template, data_dir, root / "out")
    finally:
        monkeypatch.undo()
    return dict(root=root, model_dir=model_dir, bundle_dir=bundle_dir, data_dir=data_dir, texts=texts, codec=codec,
                template=template, tokens=tokens, manager=manager, server=server, summary=summary, capture=capture)


def test_a_node_job_trains_and_scores_locally(web_job):
    summary, out = web_job["summary"], web_job["root"] / "out"
    assert summary["n_train"] == 64 and summary["n_test"] == 24 and summary["n_validation"] == 16
    assert summary["server_steps"] == 2 * 64 // BATCH  # two epochs, the second replayed from the server's cache
    assert summary["batches_sent"] == (64 + 16) // BATCH
    assert summary["test"]["n"] == 24 and 0.0 <= summary["test"]["accuracy"] <= 1.0
    assert summary["eval_agreement"] >= 0.9  # the server's torch scoring of the same bytes
    assert summary["device_seconds_per_sample"] > 0 and summary["bytes_per_sample"] > 0
    assert (out / "side_network" / "side_network.safetensors").is_file()


def test_predictions_equal_the_python_bundle_runtime_on_the_downloaded_side_network(web_job):
    """The side network the Node device saved, scored on the test split by the Python bundle runtime: the same
    class wherever Python's margin exceeds MARGIN, and logits within 1e-4."""
    out = web_job["root"] / "out"
    got = json.loads((out / "test_predictions.json").read_text())
    inference = BundleInference.load(web_job["bundle_dir"], out / "side_network", "classification")
    classifier = inference.classifier(max_length=128)
    data = load_dataset(str(web_job["data_dir"]), seed=0, max_eval_samples=16)
    want = []
    for start in range(0, len(data.test), BATCH):
        texts = [e.text for e in data.test[start:start + BATCH]]
        tokens, _, encoded = classifier.tap(texts)
        want.append(classifier.side_logits(inference.side, encoded, tokens))
    want = np.concatenate(want)
    assert got["sample_ids"] == list(range(len(data.test)))
    assert got["labels"] == [e.label for e in data.test]
    logits = np.array(got["logits"], np.float32)
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)
    margin = np.abs(want[:, 1] - want[:, 0])
    clear = margin > MARGIN
    assert clear.sum() >= len(want) - 2
    assert (np.array(got["predictions"])[clear] == want.argmax(-1)[clear]).all()
    # the saved side network is one the Python side loads as it saves its own
    state = load_file(out / "side_network" / "side_network.safetensors")
    assert set(state) == set(inference.side.state if inference.side.members is None else
                             {f"members.{j}.{k}" for j, m in enumerate(inference.side.members) for k in m.state})


def test_batches_carry_what_the_python_bundle_device_sends(web_job):
    """The Batches the server received from Node against the Python bundle runtime's encoded taps of the same
    samples: ids, labels and masks equal; the codecs' scales within 1e-5 and 99% of their codes equal (the two
    runtimes' taps differ by ~1e-7, which moves a code only where it sits on a rounding boundary)."""
    inference_codec = get_np_codec(web_job["codec"])
    frames = [decode_message(m, framework="np") for m in web_job["capture"].received]
    batches = [f for f in frames if isinstance(f.header, Batch)]
    assert [b.header.seq for b in batches] == list(range(len(batches)))
    data = load_dataset(str(web_job["data_dir"]), seed=0, max_eval_samples=16)
    from mobillm.bundle.runtime import Bundle
    from mobillm.data.order import batch_chunks
    from mobillm.data.templates import default_template
    from mobillm.recipes.bundle_infer import BundleClassifier
    from mobillm.sidenet.config import SideConfig

    bundle = Bundle.load(web_job["bundle_dir"])
    template = default_template(data.label_names)
    hello_side = json.loads(web_job["template"].read_text())["side_config"]
    side = SideConfig.parse({**hello_side, "num_labels": 2, "label_token_ids": [0, 1], "label_names": [],
                             "prompt_template": template.template})
    classifier = BundleClassifier(bundle, side, template, inference_codec, 128)
    expected = [("eval", data.validation, chunk) for chunk in batch_chunks(len(data.validation), BATCH, shuffle=False)]
    expected += [("train", data.train, chunk) for chunk in batch_chunks(len(data.train), BATCH, shuffle=True, seed=0)]
    assert len(batches) == len(expected)
    for frame, (split, examples, chunk) in zip(batches, expected):
        assert frame.header.split == split
        np.testing.assert_array_equal(frame.tensors["sample_ids"], chunk)
        np.testing.assert_array_equal(frame.tensors["labels"], [examples[i].label for i in chunk])
        tokens, _, encoded = classifier.tap([examples[i].text for i in chunk])
        np.testing.assert_array_equal(frame.tensors["attention_mask"], tokens.attention_mask)
        np.testing.assert_array_equal(frame.tensors["last_index"], tokens.last_index)
        for i, want in enumerate(encoded):
            for name, ref in want.items():
                got = frame.tensors[f"act.{i}.{name}"]
                assert got.dtype == ref.dtype and got.shape == ref.shape, name
                if np.issubdtype(ref.dtype, np.floating):  # scales: the taps' ~1e-7 relative differences
                    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * float(np.abs(ref).max()))
                else:  # codes (and the codec's shape header): a ~1e-7 difference flips a code at a rounding boundary
                    assert np.mean(got == ref) >= 0.99, name


def test_no_text_and_no_token_ids_leave_the_node_device(web_job):
    capture = web_job["capture"]
    from mobillm.bundle.runtime import Bundle
    from mobillm.data.templates import default_template

    bundle = Bundle.load(web_job["bundle_dir"])
    template = default_template(["0", "1"])
    prompt_ids = bundle.tokenizer.prompt_ids(template.prefix, web_job["texts"], template.suffix, 128)
    assert all(len(ids) >= 6 + MIN_RUN for ids in prompt_ids)
    assert capture.received and capture.sent
    assert leaks(capture.received + capture.sent, web_job["texts"], prompt_ids) == []


def test_a_connection_cut_mid_job_resumes_with_nothing_lost(web_job, tmp_path):
    """The same job straight and through a proxy that cuts the first two connections: every batch trained once,
    and the same side network, to the bit."""
    root, manager, server, tokens = web_job["root"], web_job["manager"], web_job["server"], web_job["tokens"]
    straight_token, cut_token = tokens.create("straight"), tokens.create("cut")
    args = (web_job["bundle_dir"], web_job["template"], web_job["data_dir"])
    _run_node(server.port, "straight", straight_token, *args, tmp_path / "straight")
    proxy = CuttingProxy([server.port], cuts=2, after=12_000)
    summary = _run_node(proxy.port, "cut", cut_token, *args, tmp_path / "cut", "--backoff-ms", "50")
    assert summary["reconnects"] == 2 and proxy.connections == 3
    for name in ("straight", "cut"):
        assert [len(seqs) for seqs in manager.jobs[name].feed.train_seqs] == [64 // BATCH]
    a = load_file(tmp_path / "straight" / "side_network" / "side_network.safetensors")
    b = load_file(tmp_path / "cut" / "side_network" / "side_network.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("web_job", [("llama", "nf4")], indirect=True, ids=["llama-nf4"])
def test_a_killed_node_device_resumes_from_its_output_directory(web_job, tmp_path):
    """The Node device killed mid-job and started again with the same --output-dir resumes the job from its
    job_state.json: the batches the server holds are skipped, every batch is trained once, and the side network
    equals the uninterrupted job's to the bit; started on a changed data file it is refused, naming the change."""
    manager, server, tokens = web_job["manager"], web_job["server"], web_job["tokens"]
    token = tokens.create("resumed")
    args = (token, web_job["bundle_dir"], web_job["template"])
    out = tmp_path / "out"
    proxy = StallingProxy(server.port, after=40_000)
    killed = subprocess.Popen(_node_args(proxy.port, "resumed", *args, web_job["data_dir"], out),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when_stalled(killed, proxy)
    assert json.loads((out / JOB_STATE_NAME).read_text())["hello"]["job"] == "resumed"

    changed = tmp_path / "changed"
    shutil.copytree(web_job["data_dir"], changed)
    rows = (changed / "train.tsv").read_text().splitlines()
    flipped = [rows[0]] + [f"{text}\t{1 - int(label)}" for text, label in (row.split("\t") for row in rows[1:])]
    (changed / "train.tsv").write_text("\n".join(flipped) + "\n")
    stderr = _run_node(server.port, "resumed", *args, changed, out, code=2)
    assert "its train examples changed" in stderr and f"remove {out / 'job_state.json'} to start it afresh" in stderr

    summary = _run_node(server.port, "resumed", *args, web_job["data_dir"], out)
    total = (64 + 16) // BATCH
    assert 1 <= summary["batches_skipped"] < total and summary["batches_sent"] == total - summary["batches_skipped"]
    assert summary["reconnects"] == 0 and not (out / "job_state.json").exists()
    job = manager.jobs["resumed"]
    assert [len(seqs) for seqs in job.feed.train_seqs] == [64 // BATCH] and job.samples_trained == 2 * 64
    a = load_file(web_job["root"] / "out" / "side_network" / "side_network.safetensors")  # the fixture's straight job
    b = load_file(out / "side_network" / "side_network.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
