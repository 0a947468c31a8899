"""The training worker: `moectl train` (also the container's entry point under torchrun)."""
