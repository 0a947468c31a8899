"""Staging a dataset from S3 into FSx for Lustre, where the HyperPod nodes mount it (at /fsx by default).

The first run of a dataset links its S3 prefix to `/datasets/NAME` with a data repository association (with
automatic import of new, changed and deleted objects, and a metadata import on creation); a later run of the
same dataset starts an IMPORT_METADATA_FROM_REPOSITORY task on the association's path, so objects uploaded
since are visible. File contents are loaded lazily from S3 on first read. Both are asynchronous:
`staging_state` says when the path is ready, and the launch waits for it (StagingInProgress, retried).
"""

from __future__ import annotations

from typing import Any

from moe_control.compute.base import StagingFailed, parse_s3_uri


def dataset_prefix(dataset_uri: str) -> tuple[str, str, str]:
    """s3://bucket/datasets/NAME/manifest.json -> (bucket, "datasets/NAME/", "NAME")."""
    try:
        bucket, key = parse_s3_uri(dataset_uri)
    except ValueError as e:
        raise StagingFailed(str(e)) from None
    prefix = key[: -len("manifest.json")] if key.endswith("manifest.json") else key
    prefix = prefix.strip("/") + "/"
    name = prefix.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise StagingFailed(f"no dataset folder in {dataset_uri!r}")
    return bucket, prefix, name


def _association_for(fsx: Any, filesystem_id: str, fs_path: str) -> dict | None:
    paginator_args = {"Filters": [{"Name": "file-system-id", "Values": [filesystem_id]}]}
    token = None
    while True:
        page = fsx.describe_data_repository_associations(
            **paginator_args, **({"NextToken": token} if token else {})
        )
        for assoc in page.get("Associations", []):
            if assoc.get("FileSystemPath", "").rstrip("/") == fs_path:
                return assoc
        token = page.get("NextToken")
        if not token:
            return None


def stage_dataset(fsx: Any, filesystem_id: str, mount_path: str, dataset_uri: str) -> dict[str, str]:
    """Link (or refresh) the dataset's S3 prefix under /datasets/NAME; returns the path on the nodes and
    the id of what to wait for (`association` or `task`)."""
    bucket, prefix, name = dataset_prefix(dataset_uri)
    fs_path = f"/datasets/{name}"
    s3_path = f"s3://{bucket}/{prefix}"
    node_path = f"{mount_path.rstrip('/')}{fs_path}/"
    try:
        assoc = _association_for(fsx, filesystem_id, fs_path)
        if assoc is None:
            created = fsx.create_data_repository_association(
                FileSystemId=filesystem_id,
                FileSystemPath=fs_path,
                DataRepositoryPath=s3_path,
                BatchImportMetaDataOnCreate=True,
                S3={"AutoImportPolicy": {"Events": ["NEW", "CHANGED", "DELETED"]}},
                Tags=[{"Key": "moe-on-aws:dataset", "Value": name}],
            )["Association"]
            return {"path": node_path, "association": created["AssociationId"]}
        if assoc.get("DataRepositoryPath", "").rstrip("/") != s3_path.rstrip("/"):
            raise StagingFailed(
                f"{fs_path} on {filesystem_id} is already linked to {assoc.get('DataRepositoryPath')}, not {s3_path}"
            )
        task = fsx.create_data_repository_task(
            Type="IMPORT_METADATA_FROM_REPOSITORY",
            FileSystemId=filesystem_id,
            Paths=[fs_path.lstrip("/")],
            Report={"Enabled": False},
        )["DataRepositoryTask"]
        return {"path": node_path, "association": assoc["AssociationId"], "task": task["TaskId"]}
    except StagingFailed:
        raise
    except Exception as e:
        raise StagingFailed(
            f"cannot stage {dataset_uri} into FSx {filesystem_id}: {type(e).__name__}: {e}"
        ) from None


def staging_state(fsx: Any, filesystem_id: str, fs_path: str) -> tuple[str, str]:
    """(READY | IN_PROGRESS | FAILED, why) for /datasets/NAME: its association must be AVAILABLE and the newest
    metadata import task on that path (if any) SUCCEEDED."""
    fs_path = "/" + fs_path.strip("/")
    assoc = _association_for(fsx, filesystem_id, fs_path)
    if assoc is None:
        return "FAILED", f"{fs_path} is not linked to S3 on {filesystem_id} (stage_data was not run)"
    lifecycle = assoc.get("Lifecycle", "")
    if lifecycle in ("FAILED", "MISCONFIGURED", "DELETING"):
        return "FAILED", f"the data repository association of {fs_path} is {lifecycle}"
    if lifecycle != "AVAILABLE":
        return "IN_PROGRESS", f"the data repository association of {fs_path} is {lifecycle}"
    tasks = fsx.describe_data_repository_tasks(
        Filters=[{"Name": "file-system-id", "Values": [filesystem_id]}]
    )
    mine = [
        t
        for t in tasks.get("DataRepositoryTasks", [])
        if t.get("Type") == "IMPORT_METADATA_FROM_REPOSITORY"
        and fs_path.lstrip("/") in (t.get("Paths") or [])
    ]
    if mine:
        newest = max(mine, key=lambda t: t["CreationTime"])
        if newest["Lifecycle"] in ("FAILED", "CANCELED", "CANCELING"):
            return "FAILED", f"the import task {newest['TaskId']} of {fs_path} is {newest['Lifecycle']}"
        if newest["Lifecycle"] != "SUCCEEDED":
            return "IN_PROGRESS", f"the import task {newest['TaskId']} of {fs_path} is {newest['Lifecycle']}"
    return "READY", f"{fs_path} is linked and imported"
