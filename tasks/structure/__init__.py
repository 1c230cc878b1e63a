"""What the structure tasks share: prepared chains and backbone features, heads, metrics, fm-predict-structure."""
