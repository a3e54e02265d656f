"""The services themselves: Twisted protocols and factories, one module a service.

They know nothing of listening, limits or configuration: a protocol gets its
clock, its message log and its options from the factory that builds it.
"""

__all__ = ["ack", "chargen", "discard", "echo", "flow", "qotd", "speakfirst", "timeservices"]
