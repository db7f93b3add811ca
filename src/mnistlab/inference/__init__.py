"""A trained model at work: load it and predict, evaluate it (the one fp32 evaluation), ensembles, export,
and explain what it learned and why it answers what it does."""
