"""Pretraining: the loop, its step, the optimiser and schedule, and the wall-clock budget."""
