"""TLS credentials for the server and for the channels to plugins, from PEM files."""

from __future__ import annotations

from pathlib import Path

import grpc

from mcp_server.settings import Settings


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with a client CA) for the server, or None to serve plaintext."""
    if not settings.tls_cert:
        return None
    if not settings.tls_key:
        raise ValueError("tls_cert needs tls_key")
    client_ca = _read(settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key), _read(settings.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def plugin_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS (and mTLS with a client certificate) for plugin channels, or None for plaintext."""
    if not settings.plugin_tls_ca:
        return None
    key = _read(settings.plugin_tls_key) if settings.plugin_tls_key else None
    cert = _read(settings.plugin_tls_cert) if settings.plugin_tls_cert else None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.plugin_tls_ca), private_key=key, certificate_chain=cert
    )
