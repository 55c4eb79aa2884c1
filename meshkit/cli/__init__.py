"""meshkit.cli"""
