"""Using a trained model: load and predict, evaluate (the one fp32 evaluation), ensembles, export."""
