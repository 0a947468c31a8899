"""The inference worker: OpenAI-compatible HTTP over a continuous-batching engine and a paged latent cache."""
