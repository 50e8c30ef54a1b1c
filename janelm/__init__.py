"""JaneLM: train a small language model on Jane Austen from the command line."""

__version__ = "0.1.0"
