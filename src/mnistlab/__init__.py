"""mnistlab: the 'MNIST with GPU' PyTorch lab as a real toolkit."""

__version__ = "0.1.0"
