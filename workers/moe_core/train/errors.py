"""The training worker's named failures, each with its process exit code and its Step Functions error name."""

from __future__ import annotations

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the work is intact in a checkpoint; run it again to go on


class TrainingError(Exception):
    """Base of the worker's named failures; ``error_name`` is what SendTaskFailure reports."""

    exit_code = EXIT_FAILED
    error_name = "Training.Failed"


class BadInput(TrainingError):
    """The arguments or the dataset cannot be trained on (nothing was started)."""

    exit_code = EXIT_BAD_INPUT
    error_name = "Training.BadInput"


class Preempted(TrainingError):
    """SIGTERM arrived; a checkpoint was written at ``step`` and the worker stopped."""

    exit_code = EXIT_PREEMPTED
    error_name = "Training.Preempted"

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"preempted at step {step}; checkpoint {checkpoint or '(none written)'}")
        self.step = step
        self.checkpoint = checkpoint


class Diverged(TrainingError):
    """The loss or the gradient norm became NaN or infinite."""

    error_name = "Training.Diverged"


class CheckpointFailed(TrainingError):
    """A checkpoint could not be written, or a chosen one could not be loaded."""

    error_name = "Training.CheckpointFailed"
