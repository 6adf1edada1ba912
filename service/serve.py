"""``anomaly-detector run`` and ``check-config``: start the service, or only validate its file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import uvicorn

from service.access import Access
from service.app import create_app
from service.settings import ServiceSettings, load_settings
from service.web_config import WebConfig, load_web_config


def describe(settings: ServiceSettings) -> list[str]:
    """What a valid configuration will do, one line per part."""
    lines = [f"store: {settings.store} (checkpoint every {settings.checkpoint_interval:g}s)"]
    shard = settings.shard
    if shard.count > 1:
        labels = ", ".join(shard.labels)
        lines.append(f"shard {shard.index} of {shard.count}: series whose hashmod({labels}) is {shard.index}")
    for spec in settings.detectors:
        if spec.source == "pull":
            source = f"pull {spec.query!r} every {spec.interval:g}s from {settings.prometheus.url}"
        else:
            source = f"remote_write series matching {spec.match or {}} {spec.match_re or {}}".rstrip()
        lines.append(f"detector {spec.name}: model {spec.model}, {source}")
        spread = shard.spread(spec.alerting.group_by)
        if spread:
            lines.append(
                f"warning: detector {spec.name} groups incidents by {spec.alerting.group_by} but the shards "
                f"split series by {shard.labels}: one group's series can be on two shards, whose incidents "
                f"then carry the same labels at Alertmanager; add {spread} to its alerting.group_by "
                "(Alertmanager's own group_by still sends one notification for them)"
            )
    lines.extend(f"sink {sink.name} ({sink.type})" for sink in settings.sinks)
    lines.extend(
        f"silence {', '.join(rule.matchers)} until {rule.ends_at.isoformat()}" for rule in settings.silences
    )
    return lines


def describe_web(web: WebConfig, path: Path | None) -> str:
    """The web config in one line, without a secret or a hash."""
    if path is None:
        return "web: no web config (plain HTTP, no credentials)"
    parts = []
    tls = web.tls_server_config
    if tls is not None:
        parts.append(
            f"TLS with {tls.cert_file} (min {tls.min_version}, client certificates: {tls.client_auth_type})"
        )
    if web.basic_auth_users:
        parts.append(f"basic auth for {', '.join(sorted(web.basic_auth_users))}")
    return f"web: {path}: {'; '.join(parts) or 'empty (plain HTTP, no credentials)'}"


def tls_options(web: WebConfig) -> dict[str, Any]:
    """uvicorn's keyword arguments for the web config's TLS; none without ``tls_server_config``."""
    tls = web.tls_server_config
    if tls is None:
        return {}
    context = tls.context()
    return {
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_ca_certs": tls.client_ca_file,
        "ssl_cert_reqs": context.verify_mode,
        # uvicorn's own options have no minimum TLS version: the whole context is ours.
        "ssl_context_factory": lambda config, default: context,
    }


def check_config(path: Path) -> list[str]:
    """Validate a service configuration (and its web config); raises ConfigError (file, line, key)."""
    settings = load_settings(path)
    lines = [f"{path}: valid", *describe(settings)]
    if settings.web_config_file is not None:
        lines.append(describe_web(load_web_config(settings.web_config_file), settings.web_config_file))
    return lines


def run(
    path: Path,
    host: str,
    port: int,
    web_config_file: Path | None = None,
    unauthenticated_writes: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM; state is saved on the way out.

    ``web_config_file`` (``--web.config.file``) wins over the configuration's
    ``web_config_file``; ``unauthenticated_writes`` adds to its own.
    """
    settings = load_settings(path)
    web_path = web_config_file or settings.web_config_file
    web = load_web_config(web_path) if web_path is not None else WebConfig()
    access = Access(web, host, unauthenticated_writes or settings.unauthenticated_writes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL at INFO: a line per query, and a Slack webhook URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logger = logging.getLogger("anomaly-detector")
    for line in [*describe(settings), describe_web(web, web_path)]:
        logger.info(line)
    for line in access.warnings():
        logger.warning(line)
    app = create_app(settings, access=access)
    uvicorn.run(app, host=host, port=port, log_level="info", **tls_options(web))
