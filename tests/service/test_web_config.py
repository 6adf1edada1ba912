"""Reading Prometheus's web config file: what is accepted, and errors that name the line."""

from __future__ import annotations

import ssl
from pathlib import Path

import bcrypt
import pytest

from detector.config import ConfigError
from service.access import Access
from service.cli import main
from service.settings import load_settings
from service.web_config import EXAMPLE_HASH, load_web_config
from tests.support.tls import make_pki

HASH = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=4)).decode()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        load_web_config(path)
    return str(raised.value)


def test_a_full_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    make_pki(tmp_path / "tls")
    path = _write(
        tmp_path,
        "tls_server_config:\n"
        "  cert_file: tls/server.pem\n"
        "  key_file: tls/server-key.pem\n"
        "  client_ca_file: tls/ca.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  min_version: TLS13\n"
        f"basic_auth_users:\n  alice: {HASH}\n  bob: {HASH.replace('$2b$', '$2y$')}\n",
    )
    web = load_web_config(path)
    tls = web.tls_server_config
    assert tls is not None and tls.cert_file == tmp_path / "tls" / "server.pem"
    context = tls.context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert sorted(web.basic_auth_users) == ["alice", "bob"]
    assert HASH not in repr(web)  # hashes are never shown


def test_an_empty_file_changes_nothing(tmp_path: Path) -> None:
    web = load_web_config(_write(tmp_path, "# nothing yet\n"))
    assert web.tls_server_config is None and not web.basic_auth_users


def test_a_plaintext_password_names_the_line_and_never_repeats_it(tmp_path: Path) -> None:
    path = _write(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n  bob: hunter2\n  carol: 123456\n")
    message = _error(path)
    assert f"{path}:3: basic_auth_users.bob: not a bcrypt hash" in message
    assert f"{path}:4: basic_auth_users.carol: not a bcrypt hash" in message
    assert "hunter2" not in message and "123456" not in message
    assert "bcrypt.hashpw" in message  # says how to make one


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n bob: [unclosed\n")
    assert _error(path).startswith(f"{path}:3: not valid YAML")


def test_unknown_keys_are_errors_that_list_the_allowed_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "tls_server_config:\n  cert_file: a\n  key_file: b\n  certfile: c\n")
    message = _error(path)
    assert message.startswith(f"{path}:4: tls_server_config.certfile: unknown key; allowed: cert_file")
    assert f"{path}:1: bearer_tokens: unknown key" in _error(_write(tmp_path, "bearer_tokens: {}\n"))


def test_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    make_pki(tmp_path)
    head = "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
    missing = _write(tmp_path, "tls_server_config:\n  cert_file: server.pem\n  key_file: nope.key\n")
    assert _error(missing).startswith(f"{missing}:3: tls_server_config.key_file: {tmp_path / 'nope.key'}")
    any_cert = _write(tmp_path, head + "  client_auth_type: RequireAnyClientCert\n")
    assert "use RequireAndVerifyClientCert with client_ca_file" in _error(any_cert)
    no_ca = _write(tmp_path, head + "  client_auth_type: VerifyClientCertIfGiven\n")
    assert "needs client_ca_file" in _error(no_ca)
    old = _write(tmp_path, head + "  min_version: TLS10\n")
    assert f"{old}:4: tls_server_config.min_version:" in _error(old)
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    garbage = _write(tmp_path, "tls_server_config:\n  cert_file: garbage.crt\n  key_file: server-key.pem\n")
    assert _error(garbage).startswith(f"{garbage}:2: tls_server_config: cannot use")


def test_the_service_config_names_it_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "run.yaml"
    config.write_text(
        "web_config_file: web.yml\ndetectors: [{name: rw, source: remote_write, match: {__name__: x}}]\n"
    )
    assert load_settings(config).web_config_file == tmp_path / "conf" / "web.yml"
    config.write_text(
        "web_config_file: ''\ndetectors: [{name: rw, source: remote_write, match: {__name__: x}}]\n"
    )
    assert load_settings(config).web_config_file is None


def test_the_example_is_valid_and_its_published_password_stays_on_loopback() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "web-config.yml"
    web = load_web_config(example)
    hashed = web.basic_auth_users["admin"].get_secret_value()
    assert hashed == EXAMPLE_HASH and bcrypt.checkpw(b"example-only", hashed.encode())
    assert "published example password" in Access(web, host="127.0.0.1").warnings()[0]
    with pytest.raises(ConfigError, match=r"make your own hash before listening on 0\.0\.0\.0"):
        Access(web, host="0.0.0.0")


def test_the_command_line_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    web = _write(tmp_path, "basic_auth_users:\n  alice: hunter2\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        "web_config_file: web.yml\ndetectors: [{name: rw, source: remote_write, match: {__name__: x}}]\n"
    )
    assert main(["check-config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"{web}:2: basic_auth_users.alice: not a bcrypt hash" in error and "hunter2" not in error
    web.write_text(f"basic_auth_users:\n  alice: {HASH}\n")
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"web: {web}: basic auth for alice" in out and HASH not in out

    calls = []
    monkeypatch.setattr("service.serve.run", lambda *args: calls.append(args))
    main(["run", "--config", str(config), "--web.config.file", "other.yml", "--web.unauthenticated-writes"])
    assert calls == [(config, "127.0.0.1", 8080, Path("other.yml"), True)]
