"""meshkit.rules"""
