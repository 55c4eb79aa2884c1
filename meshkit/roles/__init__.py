"""meshkit.roles: each subpackage is one role; roles never import each other."""
