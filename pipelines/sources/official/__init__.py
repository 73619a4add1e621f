"""pipelines.sources.official."""
