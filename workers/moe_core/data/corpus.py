"""Where the training text comes from: a dataset manifest folder (local or S3), a plain folder, or `stdlib`.

Every source ends as a local folder plus a verified :class:`DatasetManifest`; nothing is trained on a file
whose size or sha256 differs from its manifest. The default corpus is the Python standard library's own
source files, which ship with every Python install, so nothing needs downloading.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moe_control.datasets import MANIFEST_NAME, DatasetFile, DatasetManifest, TrainingSpec

STDLIB = "stdlib"
# Big enough for a tokenizer and a few hundred tiny steps, small enough that tests prepare it in a second.
DEFAULT_STDLIB_BYTES = 2_000_000
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


class DatasetError(ValueError):
    """A dataset that cannot be trained on: missing, unreadable, or not matching its manifest."""


@dataclass(frozen=True)
class LocalDataset:
    """A verified dataset on local disk: the files of ``manifest`` are under ``root``."""

    root: Path
    manifest: DatasetManifest

    def paths(self) -> list[Path]:
        return [self.root / f.path for f in self.manifest.files]

    def fingerprint(self) -> str:
        """Names the content: same files and checksums, same fingerprint (the spec does not count)."""
        files = [(f.path, f.size, f.sha256) for f in self.manifest.files]
        return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stdlib_sources(max_bytes: int = DEFAULT_STDLIB_BYTES) -> list[tuple[str, bytes]]:
    """A deterministic subset of the standard library's .py files: sorted by path, UTF-8 only, no tests,
    taken in order until ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    out: list[tuple[str, bytes]] = []
    total = 0
    for rel in sorted(found):
        data = (root / rel).read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not data.strip() or total + len(data) > max_bytes:
            continue
        out.append((rel, data))
        total += len(data)
    if not out:
        raise DatasetError(f"no usable .py files under {root} within {max_bytes} bytes")
    return out


def write_stdlib_dataset(
    directory: str | Path,
    max_bytes: int = DEFAULT_STDLIB_BYTES,
    *,
    name: str = "stdlib",
    training: TrainingSpec | dict[str, Any] | None = None,
) -> DatasetManifest:
    """Write a stdlib corpus and its manifest.json (written last) into ``directory``; return the manifest."""
    directory = Path(directory)
    files = []
    for rel, data in stdlib_sources(max_bytes):
        dest = directory / "text" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        files.append(DatasetFile(path=f"text/{rel}", size=len(data), sha256=sha256_bytes(data)))
    spec = TrainingSpec.model_validate(training or {})
    manifest = DatasetManifest(name=name, files=files, training=spec)
    (directory / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    return manifest


def manifest_for_folder(directory: Path, name: str | None = None) -> DatasetManifest:
    """A manifest, built in memory, of every non-hidden file of a plain folder of UTF-8 text."""
    files = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        files.append(DatasetFile(path=rel, size=len(data), sha256=sha256_bytes(data)))
    if not files:
        raise DatasetError(f"{directory} holds no text files")
    slug = "".join(c if c.isalnum() else "-" for c in (name or directory.name).lower()).strip("-")[:63]
    return DatasetManifest(name=slug or "dataset", files=files)


def parse_manifest(raw: bytes, where: str) -> DatasetManifest:
    try:
        return DatasetManifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as e:
        first = str(e).splitlines()
        detail = "; ".join(line.strip() for line in first[:3])
        raise DatasetError(f"{where} is not a valid dataset manifest: {detail}") from None


def verify_dataset(root: Path, manifest: DatasetManifest) -> None:
    """Raise DatasetError naming the first file that is missing or differs from the manifest."""
    for f in manifest.files:
        p = root / f.path
        if not p.is_file():
            raise DatasetError(f"{f.path} is listed in the manifest but missing under {root}")
        data = p.read_bytes()
        if len(data) != f.size:
            raise DatasetError(f"{f.path} has {len(data)} bytes, the manifest says {f.size}")
        if sha256_bytes(data) != f.sha256:
            raise DatasetError(f"{f.path} fails its sha256 checksum (the manifest says {f.sha256[:12]}...)")


def _download_s3_dataset(uri: str, dest: Path, s3_client: Any) -> LocalDataset:
    from botocore.exceptions import ClientError

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if prefix.endswith(MANIFEST_NAME):
        prefix = prefix[: -len(MANIFEST_NAME)].strip("/")
    base = f"{prefix}/" if prefix else ""
    try:
        raw = s3_client.get_object(Bucket=bucket, Key=base + MANIFEST_NAME)["Body"].read()
    except ClientError as e:
        raise DatasetError(f"cannot read s3://{bucket}/{base}{MANIFEST_NAME}: {e}") from None
    manifest = parse_manifest(raw, f"s3://{bucket}/{base}{MANIFEST_NAME}")
    for f in manifest.files:
        target = dest / f.path
        if (
            target.is_file()
            and target.stat().st_size == f.size
            and sha256_bytes(target.read_bytes()) == f.sha256
        ):
            continue  # already staged by an earlier attempt of this run
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3_client.download_file(bucket, base + f.path, str(target))
        except ClientError as e:
            raise DatasetError(f"cannot download s3://{bucket}/{base}{f.path}: {e}") from None
    verify_dataset(dest, manifest)
    (dest / MANIFEST_NAME).write_bytes(raw)
    return LocalDataset(dest, manifest)


def resolve_dataset(
    data: str, staging: Path, *, s3_client: Any = None, stdlib_bytes: int | None = None
) -> LocalDataset:
    """Turn ``--data`` into a verified local dataset. ``staging`` receives downloaded or generated files."""
    if data == STDLIB:
        dest = staging / "stdlib"
        manifest = write_stdlib_dataset(dest, stdlib_bytes or DEFAULT_STDLIB_BYTES)
        return LocalDataset(dest, manifest)
    if data.startswith("s3://"):
        if s3_client is None:
            raise DatasetError("an s3:// dataset needs an S3 client")
        return _download_s3_dataset(data, staging / "s3", s3_client)
    path = Path(data)
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    if not path.is_dir():
        raise DatasetError(f"--data {data!r} is neither 'stdlib', an s3:// URI, nor a folder")
    if (path / MANIFEST_NAME).is_file():
        manifest = parse_manifest((path / MANIFEST_NAME).read_bytes(), str(path / MANIFEST_NAME))
        verify_dataset(path, manifest)
        return LocalDataset(path, manifest)
    return LocalDataset(path, manifest_for_folder(path))
