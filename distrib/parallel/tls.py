"""The client's side of a TLS Dask cluster: its certificates, checked before connecting.

A ``tls://`` scheduler (``dask scheduler --protocol tls --tls-ca-file ... --tls-cert ...
--tls-key ...``) accepts clients that present a certificate signed by the cluster's CA, and
the client accepts a scheduler whose certificate that CA signed (dask checks the chain, not
host names). distrib takes the client's files from flags spelled as ``dask worker`` spells
them, else from dask's configuration (``distributed.comm.tls.ca-file``,
``distributed.comm.tls.client.cert``, ``distributed.comm.tls.client.key``: YAML, or
``DASK_DISTRIBUTED__COMM__TLS__CA_FILE`` and the like).

Every problem that can be seen before connecting is named here, with the fix: TLS flags
given in part, a file that is missing or unreadable, a key that does not match its
certificate, a certificate already expired, a ``tls://`` scheduler with no certificates. A
handshake the scheduler refuses (another CA) is named by `handshake_hint`.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from distrib.config import ClusterConfig
from distrib.errors import ClusterError, ConfigError

FLAGS = ("--tls-ca-file", "--tls-cert", "--tls-key")
CONFIG_KEYS = (
    "distributed.comm.tls.ca-file",
    "distributed.comm.tls.client.cert",
    "distributed.comm.tls.client.key",
)
MAKE_CERTS = "scripts/make_certs.sh makes a CA and a key pair per role"


def _in_memory(value: str) -> bool:
    """dask also takes PEM text in place of a path."""
    return "\n" in value


def _check_readable(path: str, what: str, where: str) -> None:
    if _in_memory(path):
        return
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(
            f"the TLS {what} {path} ({where}) cannot be read: {exc.strerror or exc}"
        ) from exc


def _check_pair(cert: str, key: str | None, where: str) -> None:
    """The certificate loads with its key and has not expired."""
    if _in_memory(cert) or (key is not None and _in_memory(key)):
        return
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"the TLS certificate {cert} and key {key} ({where}) do not form a pair "
            f"({exc}): pass the key made with that certificate"
        ) from exc
    try:  # the standard library's own reader of certificate files (no other dependency)
        not_after = ssl._ssl._test_decode_cert(cert)["notAfter"]  # type: ignore[attr-defined]
    except Exception:  # unreadable here: the handshake will tell
        return
    if ssl.cert_time_to_seconds(not_after) < time.time():
        raise ConfigError(
            f"the TLS certificate {cert} ({where}) expired on {not_after}: make a new pair "
            f"signed by the cluster's CA ({MAKE_CERTS})"
        )


def client_security(config: ClusterConfig, address: str) -> Any:
    """The `distributed.security.Security` to connect to ``address`` with; None for a
    scheduler that is not ``tls://`` (with no TLS flags).

    Raises
    ------
    ConfigError
        TLS flags given in part, or for a scheduler that is not ``tls://``; a file missing,
        unreadable, mismatched or expired.
    ClusterError
        A ``tls://`` scheduler, and no certificates in the flags or dask's configuration.
    """
    import dask
    from distributed.security import Security

    flags = (config.tls_ca_file, config.tls_cert, config.tls_key)
    if any(flags):
        missing = [flag for flag, value in zip(FLAGS, flags, strict=True) if not value]
        if missing:
            raise ConfigError(
                f"TLS needs {', '.join(FLAGS)} together (as `dask worker` takes them); "
                f"missing {', '.join(missing)}"
            )
        ca, cert, key = flags
        where = "from the flags"
        if not address.startswith("tls://"):
            raise ConfigError(
                f"TLS certificates were given for the scheduler {address}, which is not a "
                f"tls:// address: use tls://{address.split('://')[-1]} (a scheduler started "
                "with --protocol tls), or drop the TLS flags"
            )
    else:
        ca, cert, key = (dask.config.get(k, None) for k in CONFIG_KEYS)
        where = "from dask's configuration"
        if not address.startswith("tls://"):
            return None  # dask's settings are for TLS schedulers; this one is not
        if not (ca or cert):
            raise ClusterError(
                f"the Dask scheduler at {address} speaks TLS, and this client has no "
                f"certificates: pass {', '.join(FLAGS)} (or set {', '.join(CONFIG_KEYS)}, "
                "e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE)"
            )
        if not (ca and cert):
            raise ConfigError(
                f"dask's configuration sets only part of the client's TLS files: "
                f"{', '.join(CONFIG_KEYS)} are all needed"
            )
    assert ca is not None and cert is not None
    for path, what in ((ca, "CA file"), (cert, "certificate"), (key, "key")):
        if path is not None:
            _check_readable(path, what, where)
    _check_pair(cert, key, where)
    return Security(
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )


def handshake_hint(address: str, reason: str, security: Any) -> str:
    """What to check after a failed connection to ``address`` (``reason``: the error)."""
    text = reason.lower()
    if security is not None and any(
        word in text for word in ("certificate", "ssl", "tls", "handshake", "alert")
    ):
        return (
            "the TLS handshake failed: check that --tls-ca-file is the CA that signed the "
            "scheduler's certificate, and that yours was signed by the CA the scheduler "
            f"trusts and has not expired ({MAKE_CERTS})"
        )
    if address.startswith("tcp://"):
        return (
            "check the address and that `dask scheduler` runs there (a scheduler that speaks "
            "only TLS needs tls://HOST:PORT and certificates), or leave out --scheduler and "
            "DASK_SCHEDULER_ADDRESS to start a local cluster"
        )
    return (
        "check the address and that `dask scheduler` runs there, or leave out --scheduler "
        "and DASK_SCHEDULER_ADDRESS to start a local cluster"
    )
