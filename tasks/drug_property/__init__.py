"""Drug property prediction: MLP heads over molecular features, metrics, the RandomForest baseline, fm-score."""
