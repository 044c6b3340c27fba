"""Model registry: operator labels, lineage, champion per group, challenger evaluation, retrain loop."""
