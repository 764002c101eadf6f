"""Post-training quantisation and pruning on conversion's IR (calibration, int8 / 16x8, CLE, pruning)."""
