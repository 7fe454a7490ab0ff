"""slimkit.quant"""
