"""chammi_data.loading."""
