"""What a device keeps of a job it started, so that a new process of it (a restarted ``mobillm device``, a
reopened browser tab) resumes the job instead of starting it again (docs/protocol.md §6b).

A job's batches are a pure function of its Hello (batch size, seed, codec, shortcut layers...), of the settings
that shape the taps outside the Hello (``max_length``, the noise) and of the examples streamed: a resumed device
makes them again in the same seeded order and skips those the server holds (``Welcome.last_seq``). So the state
holds what proves that none of these changed, never a batch::

    {"mobillm_version": "0.1.0", "hello": {the Hello, without token and resume}, "data": "data/my.tsv",
     "settings": {"max_length": 128, "noise": 0.0}, "data_sha512": {"validation": "…", "train": "…"}}

The device writes it (atomically) once the server has welcomed the job and removes it once the side network is
saved; a job that failed keeps it, to be resumed. ``web/src/device/job_state.mjs`` keeps the same record.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mobillm import __version__
from mobillm.exceptions import ConfigError
from mobillm.files import JOB_STATE_NAME, write_atomic
from mobillm.wire.messages import Hello
from mobillm.wire.session import hello_differences

__all__ = ["JobState", "JobStateFile", "SavedJob", "examples_sha512"]


def examples_sha512(examples: Sequence) -> str:
    """SHA-512 (hex) of a split's examples in order: every field of each (``Example``: text, label;
    ``LMExample``: prompt, response) as its UTF-8 string, prefixed with its length in bytes and ``:``."""
    digest = hashlib.sha512()
    for example in examples:
        for value in dataclasses.astuple(example):
            raw = str(value).encode()
            digest.update(b"%d:%s" % (len(raw), raw))
    return digest.hexdigest()


class JobState(BaseModel):
    """One job's state: its Hello, ``data`` (where the examples came from: shown, not compared, so the file
    may move), the device-side ``settings`` that shape its taps, and ``data_sha512``, each streamed split's
    :func:`examples_sha512`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mobillm_version: str = __version__
    hello: Hello
    data: str
    settings: dict[str, Any]
    data_sha512: dict[str, str]

    @classmethod
    def of(cls, hello: Hello, data: str, settings: Mapping[str, Any], splits: Mapping[str, Sequence]) -> JobState:
        """The state of a job about to stream ``splits`` (name → examples, e.g. validation and train)."""
        return cls(hello=hello.model_copy(update={"token": None, "resume": False}), data=data, settings=dict(settings),
                   data_sha512={name: examples_sha512(examples) for name, examples in splits.items()})

    def check_resumes(self, current: JobState, where: str) -> None:
        """Refuse to resume this saved job as ``current`` unless it is the same job on the same examples: a
        ``ConfigError`` naming what changed and how to start afresh (``where``: the saved state's place)."""
        saved, job = self.hello.job, current.hello.job
        afresh = f"remove {where} to start it afresh (under another job name while the server still runs it)"
        if saved != job:
            raise ConfigError(f"{where} holds the unfinished job {saved!r}, not {job!r}: run job {saved!r} again to "
                              f"resume it, or remove {where} to start {job!r} afresh")
        differ = hello_differences(self.hello, current.hello)
        differ += [f"settings.{k}" for k in sorted(self.settings.keys() | current.settings.keys())
                   if self.settings.get(k) != current.settings.get(k)]
        if differ:
            raise ConfigError(f"job {job!r} was started with other settings ({', '.join(differ)} differ): run it with the "
                              f"same settings to resume it, or {afresh}")
        changed = [name for name in sorted(self.data_sha512.keys() | current.data_sha512.keys())
                   if self.data_sha512.get(name) != current.data_sha512.get(name)]
        if changed:
            raise ConfigError(f"the data {current.data} is not what job {job!r} was started with ({self.data}): its "
                              f"{' and '.join(changed)} examples changed; give the same data to resume the job, or {afresh}")


class JobStateFile:
    """The job state of a device's output directory, ``job_state.json`` (the web device's stores hold the same
    record: ``web/src/device/job_state.mjs``)."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / JOB_STATE_NAME

    def load(self) -> JobState | None:
        """The saved state (None: none)."""
        if not self.path.is_file():
            return None
        try:
            return JobState.model_validate_json(self.path.read_text())
        except ValidationError as err:
            raise ConfigError(f"{self.path} is not a job state this mobillm version reads ({err.error_count()} "
                              f"problems); remove it to start the job afresh") from None

    def save(self, state: JobState) -> None:
        """Replace the saved state, atomically (a crash leaves the old state or the new)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, state.model_dump_json(indent=2) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class SavedJob:
    """A job and the file that keeps its state. ``resume``: the file held this very job (same Hello, settings
    and examples), which an earlier process started; a state of another job, other settings or other data is
    refused here (``ConfigError``). :meth:`started` saves the state once the server welcomed the job,
    :meth:`finished` removes it once the side network is saved."""

    def __init__(self, store: JobStateFile, state: JobState):
        self.store, self.state = store, state
        saved = store.load()
        if saved is not None:
            saved.check_resumes(state, str(store.path))
        self.resume = saved is not None

    def started(self) -> None:
        self.store.save(self.state)

    def finished(self) -> None:
        self.store.remove()
