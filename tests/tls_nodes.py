"""RabbitMQ nodes of the test suite's own with TLS listeners, and the certificates they use.

``Certificates`` makes, under one directory: a CA, a second CA nobody trusts, a server
certificate for ``localhost`` (and an expired one), and a client certificate whose common
name is the user the EXTERNAL mechanism logs in as, its key encrypted with a password.

``TlsNode`` is a ``tests.cluster.Node`` with, besides its plain listener, a TLS listener
(``tls_port``) that verifies client certificates, and the management API on HTTPS
(``https_port``). With ``mutual`` it refuses a client without a certificate.

    python -m tests.tls_nodes start    # by hand, for a look: then `stop`
"""

from __future__ import annotations

import datetime
import shutil
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cluster import Node, _wait_port

CLIENT_USER = "kanin-tls-client"
KEY_PASSWORD = "key-pass-7f3a"
_Key = ec.EllipticCurvePrivateKey


class Certificates:
    """PEM files under ``base``: ``ca.pem``, ``other-ca.pem``, ``server.pem``/``server.key``,
    ``expired.pem``/``expired.key``, ``client.pem``/``client.key`` (encrypted) and
    ``client-key-password``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        ca_key, ca = _authority("kanin test CA", now, day)
        self._write("ca.pem", ca)
        _, other = _authority("someone else's CA", now, day)
        self._write("other-ca.pem", other)
        for name, start, end in (("server", now - day, now + 30 * day),
                                 ("expired", now - 10 * day, now - day)):  # fmt: skip
            key, cert = _issue(ca_key, ca, "localhost", start, end, server=True)
            self._write(f"{name}.pem", cert)
            self._write_key(f"{name}.key", key, None)
        key, cert = _issue(ca_key, ca, CLIENT_USER, now - day, now + 30 * day, server=False)
        self._write("client.pem", cert)
        self._write_key("client.key", key, KEY_PASSWORD)
        (base / "client-key-password").write_text(KEY_PASSWORD + "\n")

    def path(self, name: str) -> Path:
        return self.base / name

    def _write(self, name: str, cert: x509.Certificate) -> None:
        self.path(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _write_key(self, name: str, key: _Key, password: str | None) -> None:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        self.path(name).write_bytes(pem)
        self.path(name).chmod(0o600)


def _authority(
    name: str, now: datetime.datetime, day: datetime.timedelta
) -> tuple[_Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + 365 * day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: _Key,
    ca: x509.Certificate,
    name: str,
    start: datetime.datetime,
    end: datetime.datetime,
    server: bool,
) -> tuple[_Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:  # localhost by name only: 127.0.0.1 is the wrong host name
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not cert_sign, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


class TlsNode(Node):
    """A node with a plain listener (``port``), a TLS one (``tls_port``) presenting
    ``server`` (``server`` or ``expired``), and the management API on ``https_port``."""

    def __init__(
        self, index: int, base: Path, certs: Certificates, server: str, mutual: bool
    ) -> None:
        super().__init__(index, base)
        object.__setattr__(self, "certs", certs)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "mutual", mutual)

    certs: Certificates
    server: str
    mutual: bool

    @property
    def tls_port(self) -> int:
        return self.port + 10

    @property
    def https_port(self) -> int:
        return 15700 + self.index + 10

    def prepare(self) -> None:
        super().prepare()
        c = self.certs
        ssl_options = (
            f"ssl_options.cacertfile = {c.path('ca.pem')}\n"
            f"ssl_options.certfile = {c.path(self.server + '.pem')}\n"
            f"ssl_options.keyfile = {c.path(self.server + '.key')}\n"
        )
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
            "loopback_users = none\n" + ssl_options + "ssl_options.verify = verify_peer\n"
            f"ssl_options.fail_if_no_peer_cert = {str(self.mutual).lower()}\n"
            "auth_mechanisms.1 = PLAIN\n"
            "auth_mechanisms.2 = EXTERNAL\n"
            "ssl_cert_login_from = common_name\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {15700 + self.index}\n"
            "management.ssl.ip = 127.0.0.1\n"
            f"management.ssl.port = {self.https_port}\n"
            + ssl_options.replace("ssl_options.", "management.ssl.")
        )
        (self.dir / "enabled_plugins").write_text(
            "[rabbitmq_management,rabbitmq_auth_mechanism_ssl].\n"
        )

    def url(self, scheme: str = "amqps", host: str = "localhost", port: int | None = None) -> str:
        port = port or (self.tls_port if scheme == "amqps" else self.port)
        return f"{scheme}://guest:guest@{host}:{port}/"


class TlsNodes:
    """Two nodes: ``mutual`` (client certificates required, EXTERNAL) and ``expired``
    (its server certificate expired yesterday, no client certificate needed)."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.gettempdir()) / "kanin-test-tls"
        self.certs: Certificates | None = None
        self.mutual: TlsNode
        self.expired: TlsNode

    def start(self) -> None:
        self.stop()
        self.certs = certs = Certificates(self.base / "certs")
        self.mutual = TlsNode(11, self.base, certs, "server", mutual=True)
        self.expired = TlsNode(12, self.base, certs, "expired", mutual=False)
        for node in (self.mutual, self.expired):
            node.prepare()
            node.launch()
        for node in (self.mutual, self.expired):
            node.wait()
            _wait_port(node.tls_port)
        self.mutual.must("add_user", CLIENT_USER, "unused-password")
        self.mutual.must("clear_password", CLIENT_USER)
        self.mutual.must("set_permissions", "-p", "/", CLIENT_USER, ".*", ".*", ".*")
        _wait_port(self.mutual.https_port)

    def stop(self) -> None:
        for index in (11, 12):
            Node(index, self.base).kill()
        shutil.rmtree(self.base, ignore_errors=True)


if __name__ == "__main__":
    nodes = TlsNodes()
    if sys.argv[1:] == ["start"]:
        nodes.start()
        print(nodes.mutual.url(), nodes.expired.url())
    else:
        nodes.stop()
