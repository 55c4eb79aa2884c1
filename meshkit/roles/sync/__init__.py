"""Sync role: rsync copies of agents' memory and backups, validated before they become current."""
