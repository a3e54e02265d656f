"""The README tells the truth: its two commands, every option, and CI running the same test command."""

from __future__ import annotations

from pathlib import Path

from sockd.config.settings import FIELDS, optionName
from sockd.services import SERVICES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first = README.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert first[0].startswith("./scripts/run") and first[1].startswith("./scripts/test")
    for script in ("scripts/run", "scripts/test"):
        assert (ROOT / script).stat().st_mode & 0o111


def test_ci_runs_the_readme_test_command():
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_option_and_file_key_is_documented():
    for f in FIELDS:
        if f.name == "log_messages":
            assert "`--no-log-messages`" in README
        else:
            assert f"`--{optionName(f.name)}" in README, f.name
        assert f"`{f.name}`" in README, f.name


def test_every_service_and_default_listener_is_documented():
    for service in SERVICES:
        for description in service.defaults:
            assert f"`{description}`" in README, (service.name, description)


def test_example_config_runs_every_service():
    from sockd.config.file import loadConfig

    config = loadConfig(str(ROOT / "contrib" / "sockd.toml"), {s.name for s in SERVICES})
    assert config.listeners is not None
    assert {name for name, _ in config.listeners} == {s.name for s in SERVICES}
