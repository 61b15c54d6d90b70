"""`castord web`: what it refuses (one clear message, a meaningful exit code) and how it stops."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tests.process.test_castord import run_cli

pytestmark = pytest.mark.timeout(60)


def assert_refused(result, code: int, message: str) -> None:  # noqa: ANN001
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_bind_beyond_loopback_without_a_token_is_a_usage_error(app_dir, webapp):
    result = run_cli(app_dir, "web", "webapp:manager", "--host", "0.0.0.0")
    assert_refused(result, 2, "--host 0.0.0.0 is reachable from other machines: give --token-file PATH")


def test_an_unusable_token_file_is_a_usage_error(app_dir, webapp, tmp_path):
    assert_refused(run_cli(app_dir, "web", "webapp:manager", "--token-file", str(tmp_path / "nope")), 2,
                   "no such file")
    short = tmp_path / "short"
    short.write_text("secret\n")
    assert_refused(run_cli(app_dir, "web", "webapp:manager", "--token-file", str(short)), 2,
                   "the token must be at least 16 characters (it has 6)")


def test_a_bad_app_exits_3(app_dir, webapp):
    assert_refused(run_cli(app_dir, "web", "nosuchmodule:manager", "--port", "0"), 3, "cannot import 'nosuchmodule'")
    assert_refused(run_cli(app_dir, "web", "webapp", "--port", "0"), 3, "APP must look like 'module.path:variable'")


def test_a_port_in_use_exits_1_saying_so(app_dir, webapp):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(app_dir, "web", "webapp:manager", "--port", str(port))
    assert_refused(result, 1, f"cannot listen on 127.0.0.1:{port}: Address already in use")


def test_an_address_this_machine_does_not_have_exits_1(app_dir, webapp, tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 32)
    # 2001:db8::/32 is for documentation: no machine has it, and nothing is sent to it.
    result = run_cli(app_dir, "web", "webapp:manager", "--host", "2001:db8::1", "--token-file", str(token))
    assert_refused(result, 1, "cannot listen on 2001:db8::1:8000: ")


def test_sigterm_stops_it_cleanly(web_servers):
    server = web_servers()
    with urllib.request.urlopen(server.url + "/queues", timeout=10) as answer:
        assert answer.status == 200
    assert server.stop() == 0
    assert server.events("web.stopped")
    assert any(e.get("logger") == "uvicorn.access" for e in server.events())  # requests are logged as JSON
