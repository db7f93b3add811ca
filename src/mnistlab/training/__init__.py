"""The training core: presets resolved to a run (`run.train`), the one loop (`engine.fit`), its callbacks,
augmentation and torchrun/DDP support."""
