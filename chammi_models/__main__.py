"""``python -m chammi_models``: the ``chammi`` command, for environments without the console script."""

from chammi_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
