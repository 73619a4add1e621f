"""chammi_data.format."""
