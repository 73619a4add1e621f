"""The idr0017 benchmark adapter: its test layout -> a release (pipeline.py), its sample data (synth.py)."""
