"""Errors a user can act on. Each carries a one-line message; the CLI prints it and exits with 2."""

from __future__ import annotations


class SlimError(Exception):
    """A problem with the user's input (model reference, file, recipe, option)."""


class SlimFormatError(SlimError):
    """A file is not a valid .slim artifact (truncated, inconsistent, or not safetensors at all)."""


class ConfigError(SlimError, ValueError):
    """A method option out of range; the message names the method and the option, in one line."""
