"""moe_control: the control plane's shared package (the Lambda layer) - models, AWS adapters, workflow logic.

No torch here: every handler imports this package and must stay small and quick to start.
"""
