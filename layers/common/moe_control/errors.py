"""Named errors: a handler raises one of these and the state machine sees its class name as the error name.

Step Functions matches Retry/Catch on `errorType`, which the Lambda runtime sets to the exception's class name,
so every class here is part of the workflows' contract (state_machines/*.asl.json refer to them by name).
"""


class ControlPlaneError(Exception):
    """Base class; never raised itself."""


class DatasetRejected(ControlPlaneError):
    """The dataset manifest or one of its files is missing, malformed or does not match its checksum/size."""


class MalformedEvent(ControlPlaneError):
    """The event that started the workflow does not have the shape the handler expects."""


class RunNotFound(ControlPlaneError):
    """No training run with that id."""
