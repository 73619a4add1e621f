"""pipelines.sources."""
