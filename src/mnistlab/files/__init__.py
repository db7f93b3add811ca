"""Model files: run directories (config, env, metrics), checkpoints and weights in every format, exported graphs."""
