"""Settings are checked once, at start-up: a value out of range is refused there, naming
the flag and its range, and never reaches the data path."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from sniffer.proxy.settings import ProxySettings, WorkerSettings
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.settings import SettingError
from sniffer.wire.http import HttpHeadReader
from sniffer.wire.tls import ClientHelloReader
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_hello_bytes", 10, "--max-hello-bytes must be 64..65536, got 10"),
        ("max_hello_bytes", 65537, "--max-hello-bytes must be 64..65536, got 65537"),
        ("max_http_head_bytes", 63, "--max-http-head-bytes must be 64..1048576, got 63"),
        ("hello_timeout", 0.0, "--hello-timeout must be at least 0.001, got 0.0"),
        ("max_connections", -1, "--max-connections must be at least 0, got -1"),
        ("drain_grace", -1.0, "--drain-grace must be at least 0, got -1.0"),
    ],
)
def test_out_of_range_proxy_setting_is_refused_naming_flag_and_range(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(SettingError) as err:
        ProxySettings(**{field: value})  # type: ignore[arg-type]
    assert str(err.value) == message


def test_worker_settings_check_their_ranges_too() -> None:
    with pytest.raises(SettingError, match=r"--access-log-buffer must be at least 4096"):
        WorkerSettings(access_log_buffer=100)
    with pytest.raises(SettingError, match="worker index 2 not below 2 workers"):
        WorkerSettings(index=2, workers=2)


def test_every_accepted_size_is_one_the_wire_readers_take() -> None:
    """The ranges come from wire/: the extremes ProxySettings accepts never make a reader
    raise ValueError (which used to happen inside data_received)."""
    ranges = {f.name: f.metadata["range"] for f in dataclasses.fields(ProxySettings)}
    for size in ranges["max_hello_bytes"]:
        ClientHelloReader(int(size))
        ProxySettings(max_hello_bytes=int(size))
    for size in ranges["max_http_head_bytes"]:
        HttpHeadReader(int(size))
        ProxySettings(max_http_head_bytes=int(size))


def test_serve_refuses_max_hello_bytes_below_the_reader_minimum() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sniffer", "serve", "--max-hello-bytes", "10", "--admin", ""],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "--max-hello-bytes must be 64..65536, got 10" in out.stderr


def test_serve_help_takes_defaults_and_ranges_from_the_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sniffer", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )
    text = " ".join(out.stdout.split())
    assert "[64..65536]" in text
    assert "default: 16384" in text
    assert "Seconds a client has to send its ClientHello or request head." in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"lease_duration": 5.0},
            "need 0 < --lease-retry-period < --lease-renew-deadline < --lease-duration,"
            " got 2 < 10 < 5",
        ),
        (
            {"retry_period": 10.0},
            "need 0 < --lease-retry-period < --lease-renew-deadline < --lease-duration,"
            " got 10 < 10 < 15",
        ),
        ({"retry_period": 0.0}, "--lease-retry-period must be at least 0.001, got 0.0"),
        ({"page_size": 0}, "--page-size must be at least 1, got 0"),
    ],
)
def test_kubernetes_settings_refuse_what_the_source_cannot_run_with(
    values: dict[str, float], message: str
) -> None:
    """A leader must stop writing before a standby may take over: the Lease timings are
    ordered in the settings object, wherever it is made, and named by their flags."""
    with pytest.raises(SettingError) as err:
        KubernetesSettings(**values)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_serve_refuses_lease_timings_that_would_let_two_leaders_write() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sniffer",
            "serve",
            "--kubernetes",
            "--lease-duration",
            "5",
            "--lease-renew-deadline",
            "10",
            "--admin",
            "",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "--lease-renew-deadline < --lease-duration, got 2 < 10 < 5" in " ".join(
        out.stderr.replace("│", " ").split()
    )
