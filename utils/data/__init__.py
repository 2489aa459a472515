"""Data: data sets, loaders and their checks."""
