"""The .slim artifact: codecs, the validated safetensors reader/writer, save and load."""
