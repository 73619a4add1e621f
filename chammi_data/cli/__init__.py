"""Subcommands of ``chammi`` that belong to the data library (see ``chammi_models.cli``)."""
