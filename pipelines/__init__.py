"""Curation: raw WTC-11 / HPA / Cell Painting sources and the official release -> CHAMMI releases.

The name ``pipelines`` is also taken by other projects (on PyPI and as a common folder name). ``__chammi__``
marks this package: code that imports it (``pipelines.cli``, the ``chammi`` commands) checks the marker and
raises an ImportError naming the foreign package when ``import pipelines`` found another one.
"""

__chammi__ = True
