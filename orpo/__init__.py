"""ORPO core: losses, log-probs, data to tensors and a single-process trainer. Imports no Ray."""
