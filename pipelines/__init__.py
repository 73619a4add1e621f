"""Curation: raw WTC-11 / HPA / Cell Painting sources and the official release -> CHAMMI releases.

The name ``pipelines`` is also taken by other projects (on PyPI and as a common folder name). ``__chammi__``
marks this package: the ``chammi-build`` and ``chammi demo`` commands (``chammi_cli.build``) check it
and name the foreign package and the fix when ``import pipelines`` found another one.
"""

__chammi__ = True
