"""drug_property task."""
