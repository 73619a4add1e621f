"""``python -m chammi_cli``: the ``chammi`` command (``torchrun ... -m chammi_cli train ...`` as well)."""

from chammi_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
