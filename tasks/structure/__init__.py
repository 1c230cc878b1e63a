"""structure task."""
