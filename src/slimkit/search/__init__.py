"""slimkit.search"""
