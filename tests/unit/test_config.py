"""The configuration file: parsing, precedence over defaults and the command line winning.

A running daemon reading it (start-up errors, SIGHUP reload) is in tests/system/test_config_reload.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sockd.config.file import ConfigError, parseConfig
from sockd.services import BY_NAME
from sockd.tap import Options

SERVICES = set(BY_NAME)


def test_settings_at_top_level_and_in_tables():
    config = parseConfig(
        'max_connections = 10\n[limits]\nmax-per-source = 3\nallow = ["10.0.0.0/8"]\n[daemon]\nunix_mode = 600\n'
        "[ack]\nquiet_time = 0.5\nmax_per_source = 1\n",
        "x.toml", SERVICES,
    )
    assert config.values == {"max_connections": 10, "max_per_source": 3, "allow": ["10.0.0.0/8"],
                             "unix_mode": 0o600}
    assert config.services == {"ack": {"quiet_time": 0.5, "max_per_source": 1}}  # [ack]'s are ack's only
    assert config.listeners is None


def test_listen_table():
    config = parseConfig('[listen]\nack = ["tcp:1", "udp:1"]\ntime = "udp:37"\n', "x.toml", SERVICES)
    assert config.listeners == [("ack", "tcp:1"), ("ack", "udp:1"), ("time", "udp:37")]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a = 1\nbogus_setting = 3\n", "x.toml:2: unknown setting 'bogus_setting'"),
        ("\n\nmax_connections = -1\n",
         "x.toml:3: max_connections must be a whole number of at least 0 (0: unlimited), not -1"),
        ("[listen]\nfinger = ['tcp:79']\n", "x.toml:2: unknown service 'finger'"),
        ("ack_once = 1\n", "x.toml:1: ack_once must be true or false"),
        ("allow = 7\n", "x.toml:1: allow must be a list of addresses or CIDR blocks"),
        ("max_connections = \n", "x.toml:1: Invalid value"),
        # Unknown tables and keys, with a suggestion.
        ("[limts]\nmax_connections = 1\n", "x.toml:1: unknown table [limts] (did you mean 'limits'?)"),
        ("[limits]\nmax_conections = 1\n", "x.toml:2: unknown setting 'max_conections' (did you mean "
                                            "'max_connections'?)"),
        ("[ack]\nmax_mesage = 1\n", "x.toml:2: unknown setting 'max_mesage' (did you mean 'max_message'?)"),
        ("[listen]\neho = ['tcp:1']\n", "x.toml:2: unknown service 'eho' in [listen] (did you mean 'echo'?)"),
        # Duplicates: tomllib refuses them; the line comes from its message.
        ("[limits]\nmax_per_source = 1\ngrace = 2\nmax_per_source = 3\n", "x.toml:4: Cannot overwrite a value"),
        ("[limits]\ngrace = 1\n[limits]\ngrace = 2\n", "x.toml:3: Cannot declare ('limits',) twice"),
        # Wrong types, on the line of the key in its own table (not the first key of that name).
        ("[limits]\nmax_per_source = 3\n[echo]\nmax_per_source = '3'\n",
         "x.toml:4: max_per_source must be a whole number of at least 0 (0: unlimited), not '3'"),
        ("idle_timeout = 'soon'\n", "x.toml:1: idle_timeout must be a number of at least 0, not 'soon'"),
        ("metrics = 9101\n",
         "x.toml:1: metrics must be an endpoint description such as tcp:9101:interface=127.0.0.1, not 9101"),
        # A daemon-wide setting in a service's table means nothing there: refused.
        ("[ack]\nworkers = 2\n", "x.toml:2: workers is the whole daemon's, not one service's"),
    ],
)
def test_errors_name_file_line_and_problem(text, expected):
    with pytest.raises(ConfigError) as e:
        parseConfig(text.replace("a = 1\n", "max_message = 1\n"), "x.toml", SERVICES)
    assert str(e.value).startswith(expected)


def test_command_line_wins_over_file(tmp_path: Path):
    path = tmp_path / "sockd.toml"
    path.write_text('max_per_source = 3\nidle_timeout = 7\n[listen]\necho = ["tcp:7007"]\n')
    options = Options()
    options.parseOptions(["--config", str(path), "--max-per-source", "9"])
    assert options.settings.max_per_source == 9
    assert options.settings.idle_timeout == 7
    assert [(spec.service, str(spec)) for spec in options.active] == [("echo", "tcp:7007")]
    options = Options()
    options.parseOptions(["--config", str(path), "--ack", "tcp:1"])
    assert [(spec.service, str(spec)) for spec in options.active] == [("ack", "tcp:1")]


def test_every_shipped_configuration_parses_cleanly():
    """contrib/sockd.toml and the Kubernetes ConfigMap's sockd.toml pass the strict parser."""
    import yaml

    contrib = Path(__file__).resolve().parents[2] / "contrib"
    texts = {"contrib/sockd.toml": (contrib / "sockd.toml").read_text()}
    for document in yaml.safe_load_all((contrib / "kubernetes" / "configmap.yaml").read_text()):
        if document and document.get("kind") == "ConfigMap":
            texts["configmap.yaml sockd.toml"] = document["data"]["sockd.toml"]
    assert len(texts) == 2
    for name, text in texts.items():
        config = parseConfig(text, name, SERVICES)
        assert config.listeners, name


def test_log_sizes_take_a_number_or_a_size_with_a_unit(tmp_path):
    from sockd.config.file import ConfigError, loadConfig

    for text, size in (('log_max_size = "512K"', 512 << 10), ("log_max_size = 65536", 65536)):
        path = tmp_path / "sizes.toml"
        path.write_text(text + "\n")
        assert loadConfig(str(path), {"ack"}).values["log_max_size"] == size
    path.write_text('log_max_size = "lots"\n')
    with pytest.raises(ConfigError, match=r"sizes.toml:1: log_max_size must be a size in bytes .*, not 'lots'"):
        loadConfig(str(path), {"ack"})
