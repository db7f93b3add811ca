"""Experiments built on "train this configuration": optimizer comparisons, learning-rate sweeps and tuning."""
