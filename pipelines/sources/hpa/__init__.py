"""pipelines.sources.hpa."""
