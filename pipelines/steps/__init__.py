"""pipelines.steps."""
