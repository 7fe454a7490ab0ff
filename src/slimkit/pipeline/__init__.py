"""slimkit.pipeline.runner"""
