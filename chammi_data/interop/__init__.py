"""chammi_data.interop.webdataset."""
