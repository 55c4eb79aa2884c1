"""meshkit.adapters"""
