"""Streaming support of distillation (`slimkit.core.streaming`): none. Training a student needs
training data and a model, which a bare checkpoint does not have; this says so when a recipe is
streamed."""

from __future__ import annotations

from slimkit.core.streaming import register_streaming

register_streaming("distill", needs="training data and a model")
