"""Measurement: score, bytes on disk, latency. See `slimkit.eval.measure.evaluate`."""
