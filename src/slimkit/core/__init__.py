"""slimkit.core"""
