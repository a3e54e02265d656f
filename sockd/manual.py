"""The man page sockd(8) and the bash and zsh completions, generated from L{sockd.tap.Options}.

One generator for all three, reading the options the daemon really parses, so
an option added to sockd cannot be missing from its manual or its completions:
C{python -m sockd.manual} rewrites C{contrib/man/sockd.8} and
C{contrib/completion/{sockd,_sockd}}, C{--check} fails if they are stale
(tests/unit/test_manpage.py runs it).  An option that takes a value must say what
its value is (L{VALUES}), or generation fails: a number, a file, a listen
description, or a fixed set of words such as C{--workers auto}.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sockd import __version__

if TYPE_CHECKING:
    from sockd import tap

#: Runner options of the C{sockd} command (Twisted's twist), with the values they take.
RUNNER = {
    "log-format": ("words", ("text", "json"), "Log format: text, or one JSON object per line "
                   "(the default when the log is not a terminal)."),
    "log-level": ("words", ("debug", "info", "warn", "error", "critical"),
                  "Log events at this level and above (default: info)."),
    "log-file": ("file", (), "Log to this file; - for standard output (the default), + for standard error."),
    "reactor": ("words", ("default", "sockd", "sockd-epoll", "epoll", "poll", "select", "asyncio"),
                "The reactor to run on: the default is sockd's own I/O core (sockd; sockd-epoll is an alias); "
                "epoll keeps Twisted's own epoll reactor and transports."),
}

#: Examples offered for a listen description: every kind sockd takes.
STREAM_KINDS = ("tcp:", "tcp6:", "unix:", "ssl:", "tls:", "systemd:", "haproxy:tcp:")
DATAGRAM_KINDS = ("udp:",)

#: What each value-taking option takes, where it is not a plain number; None: never completed (internal).
VALUES: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "config": ("file", ("*.toml",)),
    "quotes": ("file", ()),
    "metrics": ("words", ("tcp:9101:interface=127.0.0.1", "tcp:9101", "tcp6:9101:interface=::1", "unix:")),
    "workers": ("words", ("auto", "1", "2", "4", "8")),
    "unix-mode": ("words", ("600", "660", "666")),
    "allow": ("cidr", ()),
    "deny": ("cidr", ()),
    "exempt": ("words", ("none", "127.0.0.0/8", "::1/128")),
    "trusted-proxy": ("cidr", ()),
    "metrics-allow": ("cidr", ()),
    "log-level": ("words", ("debug", "info", "warn", "error", "critical")),
    "log-max-size": ("words", ("1M", "10M", "100M")),
    "worker": None,
}


@dataclass(frozen=True)
class Option:
    """One long option as the parser knows it."""

    name: str
    short: str | None
    doc: str
    value: str | None  # None for a flag; else "number", "file", "words", "listen", "cidr" or "internal"
    words: tuple[str, ...] = ()
    repeatable: bool = False


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def sockdOptions() -> tuple[type[tap.Options], list[Option]]:
    """Every option of L{sockd.tap.Options}, in the parser's order, typed for the generators."""
    from sockd import tap
    from sockd.config.settings import FIELDS, optionName
    from sockd.services import SERVICES

    parser = tap.Options()
    services = {s.name: s for s in SERVICES}
    repeated = {optionName(f.name) for f in FIELDS if f.metadata["repeat"]}
    shorts = {long: short for short, long in parser.synonyms.items() if len(short) == 1}
    found: list[Option] = []
    for spec in dict.fromkeys(parser.longOpt):
        name = spec.rstrip("=")
        doc = _clean(parser.docs.get(name))
        if not spec.endswith("="):
            found.append(Option(name, shorts.get(name), doc, None))
        elif name in services:
            kinds = STREAM_KINDS + (DATAGRAM_KINDS if services[name].datagram is not None else ())
            found.append(Option(name, shorts.get(name), doc, "listen", kinds, repeatable=True))
        elif name in VALUES:
            kind = VALUES[name]
            value, words = kind if kind is not None else ("internal", ())
            found.append(Option(name, shorts.get(name), doc, value, words, repeatable=name in repeated))
        elif any(optionName(f.name) == name and f.metadata["kind"] is not None for f in FIELDS):
            found.append(Option(name, shorts.get(name), doc, "number"))
        else:
            raise ValueError(f"--{name} takes a value: say in sockd.manual.VALUES what it is")
    return tap.Options, found


def runnerOptions() -> list[Option]:
    """The C{sockd} command's runner options (twist's), typed like sockd's own."""
    return [Option(name, None, doc, kind, words) for name, (kind, words, doc) in RUNNER.items()]


# ---------------------------------------------------------------------------------------------------------------
# sockd(8)


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes, hyphens as minus signs, no leading control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _metavar(option: Option) -> str:
    return {"listen": "DESC", "file": "FILE", "number": "N", "cidr": "CIDR", "internal": "JSON"}.get(
        option.value or "", "VALUE")


def _manOption(option: Option) -> list[str]:
    names = f"\\fB\\-\\-{_roff(option.name)}\\fR"
    if option.short:
        names = f"\\fB\\-{option.short}\\fR, " + names
    if option.value:
        names += f" \\fI{_metavar(option)}\\fR"
    doc = option.doc
    if option.words and option.value == "words":
        doc += " Values: " + ", ".join(option.words) + "."
    if option.repeatable and "repeatable" not in doc:
        doc += " (repeatable)"
    return [".TP", names, _roff(doc)]


def manPage() -> str:
    """sockd(8), in the man(7) macros."""
    Options, options = sockdOptions()
    from sockd.tap import HIDDEN

    options = [o for o in options if o.name not in HIDDEN]
    listen = [o for o in options if o.value == "listen"]
    general = [o for o in options if o.value != "listen" and o.name not in ("help", "version")]
    last = [o for o in options if o.name in ("help", "version")]
    lines = [
        ".\\\" Generated from sockd.tap.Options by python -m sockd.manual; do not edit.",
        f'.TH SOCKD 8 "" "sockd {__version__}" "System Administration"',
        ".SH NAME",
        "sockd \\- the sockets tutorial\\(aqs ack server and the inetd small services, as one daemon",
        ".SH SYNOPSIS",
        ".B sockd",
        "[\\fIrunner options\\fR] [\\fB\\-\\-config\\fR \\fIFILE\\fR] [\\fB\\-\\-ack\\fR \\fIDESC\\fR ...] "
        "[\\fB\\-\\-echo\\fR \\fIDESC\\fR ...] [\\fIoptions\\fR]",
        ".br",
        ".B twistd \\-n \\-\\-pidfile= sockd",
        "[\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        _roff(_clean(Options.longdesc)),
        ".PP",
        "\\fBsockd\\fR runs in the foreground until SIGTERM (Twisted\\(aqs \\fBtwist\\fR runner); "
        "\\fBtwistd sockd\\fR takes the same options and adds twistd\\(aqs own (\\fB\\-\\-uid\\fR, "
        "\\fB\\-\\-gid\\fR, \\fB\\-\\-logfile\\fR, daemonizing).",
        ".SH LISTEN OPTIONS",
        "Each service has one repeatable option whose value is a listen description. If any is given, only "
        "the listeners given run. Stream descriptions are Twisted endpoint strings (\\fBtcp:\\fIPORT\\fR, "
        "\\fBtcp6:\\fR, \\fBunix:\\fIPATH\\fR, \\fBssl:\\fR, \\fBtls:\\fR, \\fBsystemd:\\fR, \\fBhaproxy:\\fR); "
        "datagram ones are \\fBudp:\\fIPORT\\fR[\\fB:interface=\\fIADDR\\fR], \\fBudp:index=\\fIN\\fR or "
        "\\fBudp:fd=\\fIN\\fR. A Unix socket file belongs to the user and group the daemon runs as "
        "(twistd\\(aqs \\fB\\-\\-uid\\fR and \\fB\\-\\-gid\\fR), unless its description adds "
        "\\fB:owner=\\fIUSER\\fR or \\fB:group=\\fIGROUP\\fR (a name or a number); "
        "\\fB:mode=\\fR sets its permissions.",
    ]
    for option in listen:
        lines += _manOption(option)
    lines += [".SH OPTIONS",
              "Every option is also a key of the configuration file, with underscores for dashes "
              "(\\fB\\-\\-max\\-per\\-source\\fR is \\fBmax_per_source\\fR); the command line wins over the file."]
    for option in general + last:
        lines += _manOption(option)
    lines += [".SH RUNNER OPTIONS",
              "Options of the \\fBsockd\\fR command itself (those of Twisted\\(aqs \\fBtwist\\fR), accepted "
              "anywhere on its command line; \\fBtwistd\\fR has its own equivalents."]
    for option in runnerOptions():
        lines += _manOption(option)
    lines += [
        ".SH SIGNALS",
        ".TP", "\\fBSIGTERM\\fR, \\fBSIGINT\\fR",
        "Stop accepting, answer what was already received, close connections once quiet, and exit; what is "
        "still open after \\fB\\-\\-grace\\fR seconds is aborted. The signal again while draining aborts "
        "what is open at once.",
        ".TP", "\\fBSIGHUP\\fR",
        "Re\\-read the \\fB\\-\\-config\\fR file: limits, access lists and quotes apply at once, listeners added to "
        "or removed from its [listen] table are opened or closed, established connections are kept. A file that "
        "does not parse leaves the running configuration in place.",
        ".SH EXIT STATUS",
        ".TP", "0", "Stopped on request: SIGTERM or SIGINT, and the drain done (what was still open after "
        "\\fB\\-\\-grace\\fR seconds aborted).",
        ".TP", "1", "A runtime failure, such as a listener that cannot be bound.",
        ".TP", "2", "A command line that cannot be parsed.",
        ".TP", "78", "A bad configuration file or listen description (EX_CONFIG). The systemd units do not "
        "restart sockd on 2 or 78 (\\fBRestartPreventExitStatus=\\fR).",
        ".TP", "killed by SIGTERM or SIGINT (143 or 130 in a shell)",
        "The signal came again while draining and cut the drain short: open connections were aborted.",
        ".SH ENVIRONMENT",
        ".TP", "\\fBNOTIFY_SOCKET\\fR",
        "sockd sends READY=1 once every listener is bound, and STOPPING=1 at shutdown (systemd \\fBType=notify\\fR).",
        ".TP", "\\fBLISTEN_FDS\\fR, \\fBLISTEN_FDNAMES\\fR",
        "Sockets passed by systemd socket activation, used by \\fBsystemd:\\fR and \\fBudp:index=\\fR descriptions.",
        ".SH FILES",
        ".TP", "\\fIsockd.sock\\fR",
        "The default ack Unix socket, in the working directory.",
        ".TP", "\\fI/etc/sockd/sockd.toml\\fR",
        "A conventional place for the \\fB\\-\\-config\\fR file (the container image and the systemd units use it).",
        ".SH EXAMPLES",
        ".nf",
        "sockd",
        "sockd \\-\\-ack tcp:51717 \\-\\-ack unix:/run/sockd/ack.sock \\-\\-ack udp:51717 \\-\\-time udp:50037",
        "sockd \\-\\-config /etc/sockd/sockd.toml \\-\\-metrics tcp:9101:interface=127.0.0.1",
        "sockd \\-\\-log\\-format json \\-\\-workers auto",
        "sockd\\-client localhost 51717 \\-m hello",
        ".fi",
        ".SH SEE ALSO",
        "\\fBsockd\\-client\\fR \\fB\\-\\-help\\fR, \\fBtwistd\\fR(1), \\fBsystemd.socket\\fR(5), "
        "\\fBinetd\\fR(8), RFC 862, 863, 864, 865, 867, 868.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Completions


def _allOptions() -> list[Option]:
    return [o for o in sockdOptions()[1] if o.value != "internal"] + runnerOptions()


def bashCompletion() -> str:
    """A bash completion function for C{sockd}: option names, and values where they are not file names."""
    options = _allOptions()
    cases: list[str] = []
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for o in options:
        if o.value is not None:
            names = [f"--{o.name}"] + ([f"-{o.short}"] if o.short else [])
            groups.setdefault((o.value, o.words), []).extend(names)
    for (kind, words), names in groups.items():
        pattern = "|".join(names)
        if kind == "file":
            body = f'_sockd_files "$cur"{" " + repr(words[0]) if words else ""}'
        elif kind in ("words", "listen"):
            body = f'_sockd_words "$cur" {" ".join(words)}'
        else:  # numbers, CIDR blocks: nothing sensible to offer
            body = "COMPREPLY=()"
        cases.append(f"        {pattern}) {body}; return ;;")
    flat = " ".join(sorted({f"--{o.name}" for o in options} | {f"-{o.short}" for o in options if o.short}))
    takes = "|".join(sorted(f"--{o.name}" for o in options if o.value is not None))
    return f"""# bash completion for sockd(8).  Generated from sockd.tap.Options by python -m sockd.manual; do not edit.
# Install as /usr/share/bash-completion/completions/sockd (pip puts it under <prefix>/share/bash-completion).

_sockd_words() {{
    local cur=$1; shift
    local IFS=$'\\n'
    COMPREPLY=($(compgen -W "$*" -- "$cur"))
    # A listen description goes on after its kind (tcp:51717): no space after a word ending in ':'.
    [[ ${{#COMPREPLY[@]}} -eq 1 && ${{COMPREPLY[0]}} == *: ]] && compopt -o nospace 2>/dev/null
    return 0
}}

_sockd_files() {{
    local cur=$1 glob=$2
    compopt -o filenames 2>/dev/null
    if [[ -n $glob ]]; then
        COMPREPLY=($(compgen -d -- "$cur") $(compgen -f -X "!$glob" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}

_sockd() {{
    local cur prev
    # Descriptions hold ':' and '=', which bash would split words at: take the words whole.
    if declare -F _get_comp_words_by_ref >/dev/null; then
        _get_comp_words_by_ref -n := cur prev
    else
        cur=${{COMP_WORDS[COMP_CWORD]}}
        prev=${{COMP_WORDS[COMP_CWORD-1]}}
    fi
    local prefix=""
    if [[ $cur == --*=* ]]; then
        prev=${{cur%%=*}}
        prefix=$prev=
        cur=${{cur#*=}}
    fi
    _sockd_value "$prev" "$cur"
    local found=$?
    if [[ $found -eq 0 ]]; then
        if [[ -n $prefix ]]; then
            local i
            for i in "${{!COMPREPLY[@]}}"; do COMPREPLY[i]=$prefix${{COMPREPLY[i]}}; done
        fi
    else
        COMPREPLY=($(compgen -W "{flat}" -- "$cur"))
        # One option that takes a value: complete it with its '=' and go straight on to the value.
        if [[ ${{#COMPREPLY[@]}} -eq 1 && ${{COMPREPLY[0]}} == @({takes}) ]]; then
            COMPREPLY[0]+="="
            compopt -o nospace 2>/dev/null
        fi
    fi
    # What bash will put back in place of the last word: from its last ':' (bash-completion's own fix-up).
    if declare -F __ltrim_colon_completions >/dev/null; then
        __ltrim_colon_completions "$prefix$cur"
    fi
    return 0
}}

# Completes the value of option $1 (0), or says it takes none (1).
_sockd_value() {{
    local cur=$2
    case $1 in
{chr(10).join(cases)}
    esac
    return 1
}}

complete -F _sockd sockd
"""


def _zshQuote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:").replace("'", "'\\''")


def zshCompletion() -> str:
    """A zsh completion function for C{sockd} (_arguments): the same options and values as bash's."""
    specs: list[str] = []
    helpers: list[str] = []
    for o in _allOptions():
        doc = _zshQuote(o.doc[:120].rstrip())
        if o.value is None:
            action = ""
        elif o.value == "file":
            action = f":file:_files{' -g ' + chr(34) + o.words[0] + chr(34) if o.words else ''}"
        elif o.value in ("words", "listen"):
            # Word lists hold ':' (tcp:9101), which an _arguments action would take apart: a function each.
            function = "_sockd_" + o.name.replace("-", "_")
            quoted = " ".join("'" + w + "'" for w in o.words)
            suffix = "-S '' " if o.value == "listen" else ""
            helpers.append(f"{function}() {{ compadd {suffix}-- {quoted}; }}")
            action = f":{_metavar(o).lower()}:{function}"
        else:
            action = f":{_metavar(o).lower()}: "
        equals = "=" if o.value is not None else ""
        repeat = "*" if o.repeatable else ""
        if o.short:
            exclusive = "" if o.repeatable else f"(-{o.short} --{o.name})"
            specs.append(f"'{exclusive}{repeat}'{{-{o.short},--{o.name}{equals}}}'[{doc}]{action}'")
        else:
            exclusive = "" if o.repeatable else f"(--{o.name})"
            specs.append(f"'{exclusive}{repeat}--{o.name}{equals}[{doc}]{action}'")
    body = " \\\n    ".join(specs)
    functions = "\n".join(helpers)
    return f"""#compdef sockd
# zsh completion for sockd(8).  Generated from sockd.tap.Options by python -m sockd.manual; do not edit.
# Install as _sockd in a directory of $fpath (pip puts it under <prefix>/share/zsh/site-functions).

{functions}

_arguments -s -S \\
    {body}
"""


# ---------------------------------------------------------------------------------------------------------------

#: Where the generated files live in the source tree.
OUTPUTS = {
    "contrib/man/sockd.8": manPage,
    "contrib/completion/sockd": bashCompletion,
    "contrib/completion/_sockd": zshCompletion,
}


def main(argv: list[str] | None = None) -> int:
    """Write the generated files into the source tree, or with C{--check} only say which are stale."""
    parser = argparse.ArgumentParser(prog="python -m sockd.manual", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the source tree (default: the one this module is in)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for relative, generate in OUTPUTS.items():
        path = args.root / relative
        text = generate()
        if path.exists() and path.read_text() == text:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for relative in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {relative}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
