"""Helpers around the package: the demo, sample data, a bag player."""
