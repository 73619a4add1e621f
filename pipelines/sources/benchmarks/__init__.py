"""Adapters of the CHAMMI-75 benchmark suite: each benchmark's test layout -> a release."""
