"""Run Twisted's reactor conformance suites against one reactor: C{run_reactor_suite.py pkg.mod.Class [trial args]}."""

import sys

from twisted.internet.test import reactormixins
from twisted.scripts import trial

reactormixins.ReactorBuilder._reactors = [sys.argv.pop(1)]
trial.run()
