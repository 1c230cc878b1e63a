"""Code completion: FIM fine-tuning of a code backbone, evaluation beside baselines, the retrieval gate, fm-complete."""
