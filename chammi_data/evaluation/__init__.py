"""chammi_data.evaluation.scoring."""
