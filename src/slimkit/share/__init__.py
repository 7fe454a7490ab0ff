"""slimkit.share"""
