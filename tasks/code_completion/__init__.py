"""code_completion task."""
