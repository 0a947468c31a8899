"""`moectl model ...`: the model presets and their parameter counts (torch is imported inside commands)."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="The model core: presets and their parameter counts.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """The model core: presets and their parameter counts."""


@app.command("params")
def params(
    preset: str = typer.Option(..., "--preset", help="tiny, mini, lite or deepseek-v3"),
    as_json: bool = typer.Option(False, "--json", help='Print {"total": ..., "active": ...} only.'),
) -> None:
    """Count total and active (per token) parameters from the preset's model built on the meta device."""
    from moe_core.config import PRESETS, ConfigError
    from moe_core.params import count_mtp_params, count_params

    try:
        counts = count_params(preset)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(counts))
        return
    from rich.console import Console
    from rich.table import Table

    config = PRESETS[preset]
    table = Table(title=f"preset {preset}")
    table.add_column("what")
    table.add_column("parameters", justify="right")
    table.add_column("billions", justify="right")
    rows = [("total (MTP excluded)", counts["total"]), ("active per token", counts["active"])]
    if config.mtp_depth:
        rows.append(("MTP module (extra)", count_mtp_params(preset)))
    for what, n in rows:
        table.add_row(what, f"{n:,}", f"{n / 1e9:.3f}")
    Console().print(table)
