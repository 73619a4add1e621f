"""The ``chammi-build`` console script: make sure ``import pipelines`` finds this toolkit, then run it.

The curation package is called ``pipelines``, a name other projects use too (on PyPI and as a folder name).
A foreign ``pipelines`` earlier on ``sys.path`` would otherwise show up as a baffling
``No module named 'chammi_cli.build'``; this entry point lives outside that name, so it can say what happened.
"""

from __future__ import annotations

import sys


def own_pipelines() -> None:
    """Raise ``ImportError`` naming the package and the fix when ``import pipelines`` is not this
    toolkit's."""
    import pipelines

    if not getattr(pipelines, "__chammi__", False):
        where = getattr(pipelines, "__file__", None) or list(getattr(pipelines, "__path__", []))
        raise ImportError(
            f"'import pipelines' resolves to {where}, which is not the CHAMMI toolkit's pipelines package "
            "(another "
            "distribution also named 'pipelines', or a folder of that name earlier on sys.path). Uninstall "
            "the "
            "other 'pipelines' distribution (pip uninstall pipelines), run from another folder, or use a "
            "fresh "
            "virtual environment for chammi."
        )


def main(argv: list[str] | None = None) -> int:
    """``chammi-build``: the curation command of :mod:`chammi_cli.build`."""
    try:
        own_pipelines()
    except ImportError as exc:
        print(f"chammi-build: error: {exc}", file=sys.stderr)
        return 2
    from chammi_cli.build import main as build_main

    return build_main(argv)


if __name__ == "__main__":
    sys.exit(main())
