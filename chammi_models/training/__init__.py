"""chammi_models.training."""
