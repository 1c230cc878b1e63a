"""secondary_structure task."""
