"""The log observers' user-facing names: C{twistd --logger sockd.logging.jsonLogger} (or C{textLogger}).

They live in L{sockd.observe.log.observers}; this module keeps the names users
already put in their units and command lines.
"""

from sockd.observe.log.observers import jsonLogger, textLogger

__all__ = ["jsonLogger", "textLogger"]
