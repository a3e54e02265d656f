"""The log room: where sockd's log goes, the message log's fast path, its level and its limits.

L{setup} decides where the log goes; L{sink} writes lines in batches;
L{messages} is the per-message log whose one hook into the sink is
L{sockd.interfaces.IMessageSink}, handed over by the assembly in a
L{messages.MessageLogging}; L{level} is C{--log-level}; L{text} is a message
as a log line shows it; L{observers} are the C{twistd --logger} observers
(JSON lines, classic text).
"""

__all__ = ["level", "messages", "observers", "setup", "sink", "text"]
