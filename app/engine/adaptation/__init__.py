"""Adaptation methods, each in its own package (config, layer, bank, file), behind `registry`."""
