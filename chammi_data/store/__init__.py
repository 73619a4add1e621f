"""chammi_data.store."""
