"""pipelines.engine.build."""
