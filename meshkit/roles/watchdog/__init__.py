"""The watchdog role: a third node that fails the supervisor over and back."""
