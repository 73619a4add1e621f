"""chammi_data.augment."""
