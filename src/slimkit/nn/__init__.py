"""slimkit.nn"""
