"""pipelines.sources.wtc11."""
