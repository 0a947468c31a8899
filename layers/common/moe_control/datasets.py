"""The dataset manifest: what a user uploads last, under the data bucket's prefix, to start a training run."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moe_control.files import ListedFile

MANIFEST_NAME = "manifest.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class DatasetFile(ListedFile):
    """One corpus file, named relative to the manifest's folder."""


class TrainingSpec(BaseModel):
    """How the pipeline trains on this dataset; every field has a default so a bare manifest trains."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "tiny"
    max_steps: int = Field(default=200, ge=1, le=10_000_000)
    checkpoint_every: int = Field(default=50, ge=1)
    seq_len: int = Field(default=128, ge=8, le=131072)
    batch_size: int = Field(default=8, ge=1)
    vocab_size: int = Field(default=2048, ge=260, le=262144)
    seed: int = 0


class DatasetManifest(BaseModel):
    """A versioned list of UTF-8 text files with sizes and checksums, plus the training spec."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    name: str
    format: Literal["text"] = "text"
    files: list[DatasetFile] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be 1-63 of [a-z0-9-], starting with a letter or digit")
        return v

    @field_validator("files")
    @classmethod
    def _unique(cls, v: list[DatasetFile]) -> list[DatasetFile]:
        paths = [f.path for f in v]
        if len(set(paths)) != len(paths):
            raise ValueError("file paths must be unique")
        return v

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)
