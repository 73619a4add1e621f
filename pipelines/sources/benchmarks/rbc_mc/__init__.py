"""The rbc_mc benchmark adapter: its test layout -> a release (pipeline.py), its sample data (synth.py)."""
