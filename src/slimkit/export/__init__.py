"""slimkit.export"""
