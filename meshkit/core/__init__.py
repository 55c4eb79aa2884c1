"""meshkit.core"""
