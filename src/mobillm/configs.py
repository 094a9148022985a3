"""What every config mobillm saves or sends shares (``SideConfig``, ``TrainConfig``, ``BundleConfig``): a frozen
pydantic model without unknown fields, validated from untrusted JSON (disk or the wire) into a
:class:`~mobillm.exceptions.ConfigError` that names every bad field at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mobillm.exceptions import ConfigError

__all__ = ["Config", "validation_problems"]


def validation_problems(err: ValidationError) -> list[str]:
    """Pydantic's errors as 'field: message' lines, for a ConfigError that names every problem."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{'.'.join(map(str, e['loc']))}: {msg}" if e["loc"] else msg)
    return lines


class Config(BaseModel):
    """Base of the configs: frozen, ``extra="forbid"``; :meth:`parse` and :meth:`read` turn bad input into a
    :class:`ConfigError`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, data: Any):
        """Validate untrusted JSON data (from disk or the wire) into a config, with a :class:`ConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(validation_problems(err)) from None

    @classmethod
    def read(cls, path: Path, missing: str):
        """The config saved at ``path``; ``missing`` is the error when there is no such file. Every problem
        names the file."""
        if not path.is_file():
            raise ConfigError(missing)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err.msg})") from None
        try:
            return cls.parse(data)
        except ConfigError as err:
            raise ConfigError([f"{path}: {p}" for p in err.problems]) from None
