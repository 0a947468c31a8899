"""Training pipeline step 1: validate the uploaded dataset manifest and record the run."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from moe_control.aws import client
from moe_control.dataset_validation import check_files, read_manifest
from moe_control.errors import MalformedEvent
from moe_control.runs import Run, put_run, run_id_for

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        upload = parse(event=event, model=S3EventNotificationEventBridgeModel)
    except ValidationError as exc:
        raise MalformedEvent(
            f"expected an S3 'Object Created' EventBridge event: {exc.errors()[:3]}"
        ) from None
    bucket, key = upload.detail.bucket.name, upload.detail.object.key
    s3 = client("s3")
    manifest = read_manifest(s3, bucket, key)
    check_files(s3, bucket, key, manifest)
    run = Run(
        run_id=run_id_for(manifest.name, bucket, key, upload.detail.object.etag or ""),
        dataset=manifest.name,
        manifest_uri=f"s3://{bucket}/{key}",
        status="VALIDATED",
        files=len(manifest.files),
        total_bytes=manifest.total_bytes,
        preset=manifest.training.preset,
        max_steps=manifest.training.max_steps,
    )
    put_run(run)
    logger.info(
        "dataset validated", extra={"run_id": run.run_id, "files": run.files, "bytes": run.total_bytes}
    )
    metrics.add_metric(name="DatasetsValidated", unit=MetricUnit.Count, value=1)
    return {"run": run.model_dump(), "training": manifest.training.model_dump()}
