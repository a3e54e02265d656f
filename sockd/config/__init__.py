"""What sockd is told: its settings, the configuration file, and listen descriptions.

The lowest layer above L{sockd.errors}: plain data and parsing, no Twisted
services, nothing bound.  Everything else reads what this package produces.
"""

__all__ = ["descriptions", "file", "settings"]
