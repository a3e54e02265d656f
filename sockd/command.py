"""C{sockd}: the daemon as one command, for operators and units that should need no Twisted.

C{sockd [runner options] [options]} is C{twist sockd ...}: Twisted's own
foreground runner (L{twisted.application.twist}), with sockd's options, its
help and its man page, and twist's runner options (C{--log-format},
C{--log-level}, C{--log-file}, C{--reactor}) accepted anywhere on the line.

One difference from C{twist}: the service is started as C{twistd} starts it,
C{privilegedStartService()} then C{startService()} (the L{IService} contract;
C{twist} calls only the second, and a service that binds in the first -- as
sockd does, so that C{twistd --uid} can take ports below 1024 -- listens on
nothing under plain C{twist}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

from twisted.python import usage

from sockd.errors import EX_USAGE

if TYPE_CHECKING:
    from twisted.application.service import IService, IServiceMaker
    from twisted.application.twist._options import TwistOptions
    from twisted.application.twist._twist import Twist
    from twisted.internet.interfaces import IReactorCore

#: Twist's own runner options that C{sockd} passes through (the ones taking no value are its own).
RUNNER_OPTIONS = ("reactor", "log-level", "log-file", "log-format")


def _twist() -> tuple[type[Twist], type[TwistOptions]]:
    """Twisted's C{twist} runner and its options; imported late so C{--help} stays cheap to import."""
    from twisted.application.twist._options import TwistOptions
    from twisted.application.twist._twist import Twist

    return Twist, TwistOptions


def _sockdOptionsClass() -> type[usage.Options]:
    from sockd.tap import HIDDEN, Options

    class CommandOptions(Options):
        """sockd's options, with help that names this command and its runner options."""

        command = "sockd"
        # Here --log-level is the runner's (listed with the runner options): one entry, not two.
        hidden = (*HIDDEN, "log-level")

        def getSynopsis(self) -> str:
            return f"Usage: sockd [runner options] {self.synopsis}"

        def getUsage(self, width: int | None = None) -> str:
            return super().getUsage(width) + "\n" + runnerUsage(width)

    return CommandOptions


def runnerUsage(width: int | None = None) -> str:
    """The runner options' help (the man page's words for them)."""
    from sockd.manual import RUNNER

    options = [{"long": name, "short": None, "doc": RUNNER[name][2], "optType": "parameter", "default": None}
               for name in RUNNER_OPTIONS]
    width = width or int(os.environ.get("COLUMNS", "80"))
    return "Runner options (Twisted's twist; anywhere on the command line):\n" + "".join(
        usage.docMakeChunks(options, width))


def _takesValue(options: usage.Options) -> tuple[set[str], set[str]]:
    """sockd's long and short options that take a value (their next word is not an option)."""
    longs = {o[:-1] for o in options.longOpt if o.endswith("=")}
    shorts = {options.shortOpt[i] for i in range(len(options.shortOpt) - 1) if options.shortOpt[i + 1] == ":"}
    return longs, shorts


def splitArguments(argv: Sequence[str], options: usage.Options) -> tuple[list[str], list[str]]:
    """(runner arguments, sockd arguments): runner options may stand anywhere before C{--}.

    A word that is the value of one of sockd's options is never taken for a
    runner option (C{--quotes --log-file} is a quotes file named C{--log-file}).
    """
    own = {o.rstrip("=") for o in options.longOpt}
    # --log-level stays twist's even though twistd sockd has one too: under twist, twist filters the log.
    runner = [name for name in RUNNER_OPTIONS if name not in own or name == "log-level"]
    longs, shorts = _takesValue(options)
    runnerArgs: list[str] = []
    sockdArgs: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            sockdArgs += words[i:]
            break
        name, hasValue, _ = word[2:].partition("=")
        if word.startswith("--") and name in runner:
            if hasValue:
                runnerArgs.append(word)
            else:
                runnerArgs += words[i:i + 2]
                i += 1
        else:
            sockdArgs.append(word)
            consumesNext = (word.startswith("--") and not hasValue and name in longs) or (
                word.startswith("-") and not word.startswith("--") and len(word) == 2 and word[1] in shorts)
            if consumesNext and i + 1 < len(words):
                sockdArgs.append(words[i + 1])
                i += 1
        i += 1
    return runnerArgs, sockdArgs


def _usageError(message: str) -> NoReturn:
    sys.stderr.write(f"sockd: error: {message} (see sockd --help)\n")
    raise SystemExit(EX_USAGE)


def _commandClasses() -> tuple[type[Twist], type[TwistOptions]]:
    TwistBase, TwistOptionsBase = _twist()
    SockdOptions = _sockdOptionsClass()

    class RunnerOptions(TwistOptionsBase):  # type: ignore[misc,valid-type]
        """twist's options with sockd as the only plugin, so no other plugin is looked up or offered."""

        @property
        def subCommands(self) -> Iterable[tuple[str, None, Callable[[], usage.Options], str]]:
            return [("sockd", None, SockdOptions, "sockd")]

        @property
        def plugins(self) -> Mapping[str, IServiceMaker]:
            from twisted.plugins.sockd_plugin import sockd

            return {"sockd": sockd}

    class Command(TwistBase):  # type: ignore[misc,valid-type]
        """twist, parsing sockd's command line and starting the service as twistd does."""

        @staticmethod
        def options(argv: Sequence[str]) -> TwistOptions:
            runnerArgs, sockdArgs = splitArguments(argv[1:], SockdOptions())
            options = RunnerOptions()
            try:
                options.parseOptions([*runnerArgs, "sockd", *sockdArgs])
            except usage.UsageError as e:
                _usageError(str(e))
            return options

        @staticmethod
        def startService(reactor: IReactorCore, service: IService) -> None:
            service.privilegedStartService()
            TwistBase.startService(reactor, service)

    return Command, RunnerOptions


def main(argv: Sequence[str] | None = None) -> None:
    """The C{sockd} console command."""
    Command, _ = _commandClasses()
    Command.main(["sockd", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
