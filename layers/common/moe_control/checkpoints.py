"""Checkpoint manifests, and finding a run's newest complete checkpoint on local disk or S3 (no torch here).

A checkpoint lives in a zero-padded step folder (``<root>/step-0000000100/``) so that listing order is step
order. Its ``manifest.json`` (step, files, sizes, sha256) is written last and is the only completion marker:
a folder without a manifest, or whose files do not match it, is never taken for a checkpoint. The recovery
Lambda uses :func:`find_latest_complete_checkpoint` with a boto3 client passed in; the training worker uses
the same stores to write, prune, download and verify checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moe_control.errors import ControlPlaneError
from moe_control.files import ListedFile

MANIFEST_NAME = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{10})$")


class CheckpointError(ControlPlaneError):
    """A checkpoint location or checkpoint that cannot be used; the message says why."""


def step_dir_name(step: int) -> str:
    """The folder name of a step: zero-padded so that lexical order is step order."""
    if not 0 <= step < 10**10:
        raise CheckpointError(f"step {step} is out of range for a checkpoint folder")
    return f"step-{step:010d}"


def parse_step_dir(name: str) -> int | None:
    m = _STEP_DIR.match(name.rstrip("/"))
    return int(m.group(1)) if m else None


class CheckpointFile(ListedFile):
    """One file of a checkpoint, relative to its step folder (never the manifest itself)."""

    @field_validator("path")
    @classmethod
    def _not_the_manifest(cls, v: str) -> str:
        if v == MANIFEST_NAME:
            raise ValueError("a checkpoint's file list cannot name the manifest")
        return v


class CheckpointManifest(BaseModel):
    """The completion marker of a checkpoint: what was written, how big, with which checksum."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    run_id: str = Field(min_length=1, max_length=128)
    step: int = Field(ge=0)
    world_size: int = Field(ge=1)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    files: list[CheckpointFile] = Field(min_length=1)
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_file(root: Path, relpath: str) -> CheckpointFile:
    p = root / relpath
    return CheckpointFile(path=relpath, size=p.stat().st_size, sha256=sha256_file(p))


def _problem(f: CheckpointFile, root: Path) -> str | None:
    p = root / f.path
    if not p.is_file():
        return f"{f.path} is missing"
    if (size := p.stat().st_size) != f.size:
        return f"{f.path} has {size} bytes, the manifest says {f.size}"
    if sha256_file(p) != f.sha256:
        return f"{f.path} fails its sha256 checksum"
    return None


def verify_local_files(manifest: CheckpointManifest, root: Path, threads: int = 8) -> list[str]:
    """Every problem of a checkpoint copy on local disk against its manifest (empty list: it is whole).
    Files are hashed in parallel threads (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(manifest.files)))) as pool:
        found = pool.map(lambda f: _problem(f, root), manifest.files)
        return [p for p in found if p is not None]


class CheckpointStore(Protocol):
    """Where a run's checkpoints live: a local folder or an S3 prefix. ``location`` is printable."""

    location: str

    def steps(self) -> list[int]: ...
    def read_manifest_bytes(self, step: int) -> bytes | None: ...
    def file_sizes(self, step: int) -> dict[str, int]: ...
    def put_file(self, step: int, relpath: str, local_path: Path) -> None: ...
    def put_bytes(self, step: int, relpath: str, data: bytes) -> None: ...
    def download(self, step: int, relpaths: list[str], dest: Path) -> None: ...
    def delete_step(self, step: int) -> None: ...
    def step_location(self, step: int) -> str: ...


class LocalCheckpointStore:
    """Checkpoints in a folder of this machine (or a shared file system such as FSx for Lustre)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.location = str(self.root)

    def step_path(self, step: int) -> Path:
        return self.root / step_dir_name(step)

    def step_location(self, step: int) -> str:
        return str(self.step_path(step))

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (parse_step_dir(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(s for s in found if s is not None)

    def read_manifest_bytes(self, step: int) -> bytes | None:
        p = self.step_path(step) / MANIFEST_NAME
        return p.read_bytes() if p.is_file() else None

    def file_sizes(self, step: int) -> dict[str, int]:
        root = self.step_path(step)
        if not root.is_dir():
            return {}
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}

    def put_file(self, step: int, relpath: str, local_path: Path) -> None:
        dest = self.step_path(step) / relpath
        if Path(local_path).resolve() == dest.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_path, dest)

    def put_bytes(self, step: int, relpath: str, data: bytes) -> None:
        # Write then rename, so a reader never sees half a manifest.
        dest = self.step_path(step) / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)

    def download(self, step: int, relpaths: list[str], dest: Path) -> None:
        src = self.step_path(step)
        for rel in relpaths:
            if (src / rel).resolve() == (dest / rel).resolve():
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dest / rel)

    def delete_step(self, step: int) -> None:
        shutil.rmtree(self.step_path(step), ignore_errors=True)


class S3CheckpointStore:
    """Checkpoints under ``s3://bucket/prefix/step-NNNNNNNNNN/``; the boto3 S3 client is passed in."""

    def __init__(self, client: Any, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = f"s3://{bucket}/{self.prefix}"

    def _key(self, step: int, relpath: str = "") -> str:
        return f"{self.prefix}{step_dir_name(step)}/{relpath}"

    def step_location(self, step: int) -> str:
        return f"s3://{self.bucket}/{self._key(step)}"

    def _list(self, prefix: str, delimiter: str | None = None) -> list[dict]:
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        pages = self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        out: list[dict] = []
        for page in pages:
            out.extend(page.get("CommonPrefixes", []) if delimiter else page.get("Contents", []))
        return out

    def steps(self) -> list[int]:
        found = (parse_step_dir(p["Prefix"][len(self.prefix) :]) for p in self._list(self.prefix, "/"))
        return sorted(s for s in found if s is not None)

    def read_manifest_bytes(self, step: int) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(step, MANIFEST_NAME))[
                "Body"
            ].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def file_sizes(self, step: int) -> dict[str, int]:
        base = self._key(step)
        return {o["Key"][len(base) :]: o["Size"] for o in self._list(base)}

    def put_file(self, step: int, relpath: str, local_path: Path) -> None:
        self.client.upload_file(str(local_path), self.bucket, self._key(step, relpath))

    def put_bytes(self, step: int, relpath: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(step, relpath), Body=data)

    def download(self, step: int, relpaths: list[str], dest: Path) -> None:
        for rel in relpaths:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self._key(step, rel), str(dest / rel))

    def delete_step(self, step: int) -> None:
        keys = [{"Key": o["Key"]} for o in self._list(self._key(step))]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000]})


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix")."""
    if not uri.startswith("s3://"):
        raise CheckpointError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise CheckpointError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


def open_store(uri: str | Path, s3_client: Any = None) -> CheckpointStore:
    """A store for ``s3://bucket/checkpoints/RUN`` (needs an S3 client) or a local folder."""
    uri = str(uri)
    if uri.startswith("s3://"):
        if s3_client is None:
            raise CheckpointError("an S3 checkpoint location needs an S3 client")
        bucket, prefix = parse_s3_uri(uri)
        return S3CheckpointStore(s3_client, bucket, prefix)
    return LocalCheckpointStore(uri)


@dataclass(frozen=True)
class SkippedCheckpoint:
    step: int
    reason: str


@dataclass
class CheckpointSearch:
    """The newest complete checkpoint (None if there is none) and why each newer one was passed over."""

    manifest: CheckpointManifest | None
    location: str | None = None
    skipped: list[SkippedCheckpoint] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "step": self.manifest.step if self.manifest else None,
            "location": self.location,
            "skipped": [{"step": s.step, "reason": s.reason} for s in self.skipped],
        }


def check_checkpoint(store: CheckpointStore, step: int) -> tuple[CheckpointManifest | None, str | None]:
    """(manifest, None) when the step folder holds a manifest and every file it lists with its size;
    otherwise (None, reason). Checksums need the bytes: the worker checks them when it downloads."""
    raw = store.read_manifest_bytes(step)
    if raw is None:
        return None, "no manifest (incomplete or still being written)"
    try:
        manifest = CheckpointManifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as e:
        return None, f"unreadable manifest: {str(e).splitlines()[0]}"
    if manifest.step != step:
        return None, f"manifest says step {manifest.step} but lies in the folder of step {step}"
    sizes = store.file_sizes(step)
    for f in manifest.files:
        if f.path not in sizes:
            return None, f"{f.path} is missing"
        if sizes[f.path] != f.size:
            return None, f"{f.path} has {sizes[f.path]} bytes, the manifest says {f.size} (truncated?)"
    return manifest, None


def find_latest_complete_checkpoint(
    store: CheckpointStore, *, before_step: int | None = None, exclude: dict[int, str] | None = None
) -> CheckpointSearch:
    """Walk the step folders newest first and return the first complete one.

    ``exclude`` maps steps already rejected by the caller (e.g. a failed checksum) to the reason, so they
    are reported and passed over; ``before_step`` ignores that step and newer ones.
    """
    exclude = exclude or {}
    skipped: list[SkippedCheckpoint] = []
    for step in reversed(store.steps()):
        if before_step is not None and step >= before_step:
            continue
        if step in exclude:
            skipped.append(SkippedCheckpoint(step, exclude[step]))
            continue
        manifest, reason = check_checkpoint(store, step)
        if manifest is not None:
            return CheckpointSearch(manifest, store.step_location(step), skipped)
        skipped.append(SkippedCheckpoint(step, reason or "unknown"))
    return CheckpointSearch(None, None, skipped)


def find_latest_complete_checkpoint_s3(s3_client: Any, uri: str) -> CheckpointSearch:
    """The recovery Lambda's entry: ``uri`` is ``s3://bucket/checkpoints/RUN``."""
    bucket, prefix = parse_s3_uri(uri)
    return find_latest_complete_checkpoint(S3CheckpointStore(s3_client, bucket, prefix))


def prune_checkpoints(store: CheckpointStore, keep: int) -> list[int]:
    """Keep the newest ``keep`` complete checkpoints; delete older complete ones and any incomplete folder
    older than the newest complete one (a newer incomplete one may still be being written). Returns the
    deleted steps."""
    if keep < 1:
        raise CheckpointError("keep must be at least 1")
    complete, incomplete = [], []
    for step in store.steps():
        (complete if check_checkpoint(store, step)[0] is not None else incomplete).append(step)
    if not complete:
        return []
    doomed = complete[:-keep] + [s for s in incomplete if s < complete[-1]]
    for step in sorted(doomed):
        store.delete_step(step)
    return sorted(doomed)
