"""The training data pipeline: corpus sources and manifests, the BPE tokenizer, packed shards, the sampler."""
