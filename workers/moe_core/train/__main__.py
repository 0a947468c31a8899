"""`python -m moe_core.train` (what torchrun starts in the container): the `moectl train` command alone."""

from moe_core.train.cli import main

main()
