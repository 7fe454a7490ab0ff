"""slimkit.train: the one training loop (`loop.fit`), its checkpoints, and supervised data from a Task."""
