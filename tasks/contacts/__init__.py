"""contacts task."""
