"""The .slim artifact: codecs, the validated safetensors reader/writer, save and load."""

from slimkit.io import codec_ans, codec_entropy, codec_palette, codec_sparse, codec_vq  # noqa: F401  (register codecs)
from slimkit.io.artifact import load, load_state_dict, read_manifest, save

__all__ = ["load", "load_state_dict", "read_manifest", "save"]
