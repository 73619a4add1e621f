"""Curation: raw WTC-11 / HPA / Cell Painting sources and the official release -> CHAMMI releases."""
