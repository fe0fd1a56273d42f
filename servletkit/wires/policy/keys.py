"""The policy server's keys and TLS pair: generated once, kept in files only its owner reads.

Two ed25519 keys (Synapse's signing-key file format, via signedjson): the
server's **federation key**, published on ``/_matrix/key/v2/server`` and used
for X-Matrix on its own requests, and the separate **policy key** (key ID
``ed25519:policy_server``), whose public half goes into a room's
``m.room.policy`` state and which signs the events the plugins allow.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import logging
import secrets
from pathlib import Path
from typing import Final

import attrs
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_signing_keys,
    write_signing_keys,
)
from signedjson.types import SigningKey

from servletkit.files import write_private

log = logging.getLogger("servletkit.policy_wire")

POLICY_KEY_ID: Final = "ed25519:policy_server"
"""The key ID of every policy signature (spec: always this one)."""

FEDERATION_KEY_FILE: Final = "federation.signing.key"
POLICY_KEY_FILE: Final = "policy.signing.key"
TLS_CERTIFICATE_FILE: Final = "tls.crt"
TLS_PRIVATE_KEY_FILE: Final = "tls.key"


class KeyFileError(Exception):
    """A key file that exists but cannot be read as a signing key."""


def load_or_generate(path: Path, version: str | None) -> SigningKey:
    """The signing key in ``path``; generated (version ``version``, or a random one) and
    written 0600 if the file does not exist yet."""
    if not path.exists():
        key = generate_signing_key(version or "a_" + secrets.token_hex(2))
        text = io.StringIO()
        write_signing_keys(text, [key])
        write_private(path, text.getvalue())
        log.info("policy wire: generated a new signing key %s:%s in %s", "ed25519",
                 key.version, path)
    try:
        with path.open() as file:
            keys = read_signing_keys(file)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a signing key file ({exc}); move it away and a new "
                           "key is generated") from None
    if not keys:
        raise KeyFileError(f"{path}: holds no key; delete it and a new key is generated")
    return keys[0]


@attrs.frozen
class PolicyKeys:
    """The federation key and the policy key of one policy server."""

    federation: SigningKey = attrs.field(repr=False)
    policy: SigningKey = attrs.field(repr=False)

    @property
    def federation_key_id(self) -> str:
        return f"ed25519:{self.federation.version}"

    @property
    def policy_public_key(self) -> str:
        """The unpadded base64 public policy key (``public_keys.ed25519``)."""
        return str(encode_verify_key_base64(get_verify_key(self.policy)))

    @property
    def federation_public_key(self) -> str:
        return str(encode_verify_key_base64(get_verify_key(self.federation)))


def load_keys(state_dir: Path) -> PolicyKeys:
    """The keys in ``state_dir``, generated on the first call and kept."""
    return PolicyKeys(load_or_generate(state_dir / FEDERATION_KEY_FILE, None),
                      load_or_generate(state_dir / POLICY_KEY_FILE, "policy_server"))


def self_signed_pair(state_dir: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate and key for ``host`` in ``state_dir`` (made once, for local
    use: a real deployment names its own files in ``[policy]``)."""
    certificate, private_key = state_dir / TLS_CERTIFICATE_FILE, state_dir / TLS_PRIVATE_KEY_FILE
    if certificate.exists() and private_key.exists():
        return certificate, private_key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alternative = x509.DNSName(host)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(private_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    certificate.parent.mkdir(parents=True, exist_ok=True)
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.warning("policy wire: GENERATED A SELF-SIGNED TLS CERTIFICATE for %s in %s: fine for "
                "local use (a homeserver with federation_verify_certificates: false), not for "
                "a real deployment; set [policy] tls_certificate and tls_private_key", host,
                certificate)
    return certificate, private_key
