"""CHAMMI-75 as a source: its published layout read from a folder or its bucket."""
