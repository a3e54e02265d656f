"""System tests: the installed sockd, twistd and twist, and other programs (haproxy, prometheus, podman, ...)."""
