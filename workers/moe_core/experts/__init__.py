"""The tiered expert store: routed experts' weights across GPU, host, Redis and S3 tiers."""
