"""Experiments built on "train this configuration": optimizer comparisons and learning-rate sweeps."""
