"""The supervisor role: the fleet's one stateful part."""
