"""SecMLOps."""
