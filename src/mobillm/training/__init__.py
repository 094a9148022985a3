"""Training the side network (and the on-device baselines): one train step, the side trainer, the fit loop."""
