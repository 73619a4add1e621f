"""pipelines.sources.cp."""
