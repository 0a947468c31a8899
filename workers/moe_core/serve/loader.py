"""Load a model artifact (config.json, model.safetensors, tokenizer.json, optional routing_stats.json) from a
local directory or from S3 (s3://bucket/prefix/, through boto3, which honours AWS_ENDPOINT_URL)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from moe_core.artifact import CONFIG_FILE, WEIGHTS_FILE

ARTIFACT_FILES = (CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json")
OPTIONAL_FILES = ("routing_stats.json",)


class ModelNotFound(FileNotFoundError):
    """The model location lacks a file the server needs."""


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ModelNotFound(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def download_s3_model(uri: str, dest: Path | None = None, client=None) -> Path:
    """Copy the artifact's files under an S3 prefix into a local directory (cached by URI)."""
    from moe_core.experts.tiers import s3_client

    bucket, prefix = _split_s3(uri)
    client = client or s3_client()
    if dest is None:
        root = Path(os.environ.get("MOE_MODEL_CACHE", Path(tempfile.gettempdir()) / "moe-models"))
        dest = root / hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACT_FILES + OPTIONAL_FILES:
        key = f"{prefix}/{name}" if prefix else name
        target = dest / name
        try:
            client.download_file(bucket, key, str(target) + ".part")
        except client.exceptions.ClientError as exc:
            if name in OPTIONAL_FILES:
                continue
            raise ModelNotFound(f"s3://{bucket}/{key} could not be read: {exc}") from exc
        os.replace(str(target) + ".part", target)
    return dest


def resolve_model_dir(location: str) -> Path:
    """A local directory holding the artifact, downloading it first when `location` is an S3 URI."""
    path = download_s3_model(location) if location.startswith("s3://") else Path(location)
    missing = [n for n in ARTIFACT_FILES if not (path / n).is_file()]
    if missing:
        raise ModelNotFound(f"model at {location} lacks {missing}")
    return path
