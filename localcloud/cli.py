"""`moectl local ...`: run the embedded local cloud with the template deployed, until Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def start_cloud(port: int, template: Path, profile: str):
    """Start and deploy, turning every known failure into one clear line (exit code 2), never a traceback."""
    from localcloud.cloud import LocalCloud, LocalCloudError
    from localcloud.deployer import DeployError
    from localcloud.template import TemplateError

    cloud = LocalCloud(port=port)
    try:
        cloud.start()
        cloud.deploy(template=template, profile=profile)
    except (LocalCloudError, TemplateError, DeployError) as exc:
        cloud.stop()
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    return cloud


def endpoints_table(cloud) -> Table:
    d = cloud.deployment
    table = Table(title=f"local cloud - stack {d.stack_name}", show_lines=False)
    table.add_column("what")
    table.add_column("where")
    table.add_row("AWS endpoint", f"{cloud.endpoint}  (export AWS_ENDPOINT_URL={cloud.endpoint})")
    for lid, api in cloud.apis.items():
        table.add_row(f"API {lid}", api.url)
    for lid, name in sorted(d.by_type("AWS::S3::Bucket").items()):
        table.add_row(f"bucket {lid}", f"s3://{name}")
    for lid, name in sorted(d.by_type("AWS::DynamoDB::Table").items()):
        table.add_row(f"table {lid}", name)
    for lid, arn in sorted(d.by_type("AWS::StepFunctions::StateMachine").items()):
        table.add_row(f"state machine {lid}", arn)
    table.add_row("function logs", str(cloud.runtime.log_dir))
    return table


def up(
    port: int = typer.Option(0, help="Port for the AWS endpoint (0 = a free one)."),
    template: Path = typer.Option(PROJECT_ROOT / "template.yaml", help="The SAM template to deploy."),
    profile: str = typer.Option("local", help="samconfig.toml profile with the parameter overrides."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every delivery and API call."),
) -> None:
    """Start the local cloud, deploy the template, print the endpoints, and stay up until Ctrl-C."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    started = time.monotonic()
    cloud = start_cloud(port, template, profile)
    console.print(endpoints_table(cloud))
    t = cloud.timings
    console.print(
        f"ready in {time.monotonic() - started:.1f} s (server {t.server_s:.1f} s, SAM transform {t.transform_s:.1f} s, "
        f"deploy {t.deploy_s:.1f} s). Credentials: any (e.g. AWS_ACCESS_KEY_ID=localcloud). Ctrl-C stops."
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    console.print("stopping...")
    cloud.stop()
    console.print("stopped.")
