"""Validate an uploaded dataset: the manifest parses, and every file it lists exists in S3 with its size."""

from __future__ import annotations

import json
import posixpath
from typing import Any

from botocore.exceptions import ParamValidationError
from pydantic import ValidationError

from moe_control.datasets import DatasetManifest
from moe_control.errors import DatasetRejected


def read_manifest(s3: Any, bucket: str, key: str) -> DatasetManifest:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        raise DatasetRejected(f"s3://{bucket}/{key} does not exist") from None
    except ParamValidationError as exc:  # a bucket or key S3 cannot have
        raise DatasetRejected(f"s3://{bucket}/{key} is not an S3 object name: {exc}") from None
    except s3.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "AccessDenied", "InvalidBucketName", "403", "404"):
            raise DatasetRejected(f"s3://{bucket}/{key} cannot be read: {code}") from None
        raise
    try:
        return DatasetManifest.model_validate(json.loads(body))
    except json.JSONDecodeError as exc:
        raise DatasetRejected(f"s3://{bucket}/{key} is not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DatasetRejected(f"s3://{bucket}/{key} is not a valid manifest: {problems}") from None


def check_files(s3: Any, bucket: str, manifest_key: str, manifest: DatasetManifest) -> None:
    """Every listed file must exist with the listed size (checksums are verified by the worker that reads them)."""
    folder = posixpath.dirname(manifest_key)
    problems = []
    for f in manifest.files:
        key = posixpath.join(folder, f.path)
        try:
            size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        except s3.exceptions.ClientError:
            problems.append(f"{f.path}: missing")
            continue
        if size != f.size:
            problems.append(f"{f.path}: size {size}, manifest says {f.size}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DatasetRejected(f"dataset {manifest.name}: {shown}")
