"""Named errors: a handler raises one of these and the state machine sees its class name as the error name.

Step Functions matches Retry/Catch on `errorType`, which the Lambda runtime sets to the exception's class name,
so every class here is part of the workflows' contract (state_machines/*.asl.json refer to them by name).
"""


class ControlPlaneError(Exception):
    """Base class; never raised itself."""


class ConfigurationError(ControlPlaneError):
    """The function's environment lacks a setting the template should have given it."""


class DatasetRejected(ControlPlaneError):
    """The dataset manifest or one of its files is missing, malformed or does not match its checksum/size."""


class MalformedEvent(ControlPlaneError):
    """The event that started the workflow does not have the shape the handler expects."""


class UnknownEvent(ControlPlaneError):
    """A well-formed event that no workflow handles (a rule pattern and the router disagree)."""


class RunNotFound(ControlPlaneError):
    """No training run with that id."""


class ClusterFailed(ControlPlaneError):
    """The cluster is in a failed state."""


class EvaluationFailed(ControlPlaneError):
    """The trained model does not pass the evaluation gate."""


class RecoveryBudgetExhausted(ControlPlaneError):
    """The run has been relaunched as often as allowed; a person must look."""


class GateFailed(ControlPlaneError):
    """The model package does not pass the promotion gates (approval status or metrics)."""


class DeploymentFailed(ControlPlaneError):
    """The inference endpoint could not be started."""


class SmokeTestFailed(ControlPlaneError):
    """The new endpoint did not answer a completion correctly."""


class NoLiveEndpoint(ControlPlaneError):
    """No model is deployed to serve completions."""
