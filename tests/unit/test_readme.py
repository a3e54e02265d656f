"""The README and docs/ tell the truth: the two commands, every option, service and JSON key, CI's test command."""

from __future__ import annotations

from pathlib import Path

from sockd.config.settings import FIELDS, optionName
from sockd.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def test_readme_opens_with_the_two_commands():
    first = README.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert README.index("```sh\n") < README.index("\n## "), "the commands come before any section"
    assert first[0].startswith("./scripts/run") and first[1].startswith("./scripts/test")
    for script in ("scripts/run", "scripts/test"):
        assert (ROOT / script).stat().st_mode & 0o111


def test_ci_runs_the_readme_test_command():
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_option_and_file_key_is_in_the_option_reference():
    operating = (DOCS / "operating.md").read_text()
    reference = operating.split("## Option reference", 1)[1].split("\n## ", 1)[0]
    for f in FIELDS:
        if f.name == "log_messages":
            assert "`--no-log-messages`" in reference
        else:
            assert f"`--{optionName(f.name)}" in reference, f.name
        assert f"`{f.name}`" in reference, f.name


def test_every_service_and_default_listener_is_documented():
    services = (DOCS / "services.md").read_text()
    for service in SERVICES:
        for description in service.defaults:
            assert f"`{description}`" in README, (service.name, description)
            assert f"`{description}`" in services, (service.name, description)


def test_every_json_key_of_sockd_client_is_documented():
    from tests.system.test_client_measure import CLOCK_KEYS, LATENCY_KEYS, LOAD_KEYS, PING_KEYS, RTT_KEYS

    client = (DOCS / "client.md").read_text().split("## --json", 1)[1]
    for key in PING_KEYS | RTT_KEYS | LOAD_KEYS | LATENCY_KEYS | CLOCK_KEYS:
        assert f"`{key}`" in client, key


def test_example_config_runs_every_service():
    from sockd.config.file import loadConfig

    config = loadConfig(str(ROOT / "contrib" / "sockd.toml"), {s.name for s in SERVICES})
    assert config.listeners is not None
    assert {name for name, _ in config.listeners} == {s.name for s in SERVICES}
