"""moectl: the one command-line entry point for people - the local cloud, the demo, training, serving, the model."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Train and serve a DeepSeek-V3-style MoE on AWS, or on the embedded local cloud.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

local_app = typer.Typer(help="The embedded local cloud (moto with its gaps closed) running template.yaml.")
app.add_typer(local_app, name="local")

# Command modules import only typer/rich at the top: torch, moto and boto3 load when a command runs.
from localcloud.cli import up as local_up  # noqa: E402

local_app.command("up")(local_up)

from localcloud.demo import demo  # noqa: E402

app.command("demo")(demo)

# model commands are registered here
from moe_core.cli_model import app as model_app  # noqa: E402

app.add_typer(model_app, name="model")

# train command is registered here
from moe_core.train.cli import train  # noqa: E402

app.command("train")(train)

# serve command is registered here
from moe_core.serve.cli import serve  # noqa: E402

app.command("serve")(serve)


if __name__ == "__main__":
    app()
