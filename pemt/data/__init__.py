"""Data for training and evaluation: data-set loading and the synthetic demo set."""
