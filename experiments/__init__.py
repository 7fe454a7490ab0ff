"""One-off studies run from the repository root (`python -m experiments.<name>`); not part of the slimkit package."""
