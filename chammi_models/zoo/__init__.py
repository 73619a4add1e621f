"""chammi_models.zoo."""
