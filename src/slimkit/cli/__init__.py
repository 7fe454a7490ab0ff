"""slimkit.cli"""
