"""The lab's public-key infrastructure: one certificate authority per lab, and per
infrastructure node (manager, MUX, host) plus the operator a key and a certificate whose
common name is the node's name.

Why: the control plane is OVSDB over mutual TLS, as OVN secures its southbound database.
ovsdb-server checks every client's certificate against the lab CA, and its role-based
access control (RBAC_Role / RBAC_Permission, see manager/rbac.py) compares the certificate's
common name with a column of the row a client writes: a host can update its own Chassis row
and nobody else's. OVN builds the same layout with `ovs-pki` (a shell wrapper over openssl);
muxlab uses the `cryptography` package instead, so deploying a lab shells out to nothing.

Layout, in `<lab folder>/PKI_FOLDER` (created idempotently: what exists is kept, what is
missing is added, so redeploying never changes a node's identity):

    ca.crt  ca.key (0600)  api-token (0600)
    <node>/ca.crt  <node>/node.crt  <node>/node.key (0600)    for every manager, MUX, host, operator
    <manager>/api-token (0600)                                the managers' copy of the API's token

Each `<node>/` directory is what the node sees at PKI_DIR. Keys are EC P-256, certificates
valid ten years (a lab is not a production fleet; nothing here rotates).
"""
from __future__ import annotations

import datetime
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from muxlab.datapath.conventions import API_TOKEN, CA_CERT, NODE_CERT, NODE_KEY, OPERATOR, PKI_FOLDER

CA_KEY = "ca.key"
VALIDITY = datetime.timedelta(days=3650)


def node_names(lab) -> list[str]:
    """Every identity the PKI issues: managers, MUXes, hosts and the operator."""
    return [*lab.managers, *(m.name for m in lab.muxes), *(h.name for h in lab.hosts), OPERATOR]


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (a key is never world-readable, even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)   # a leftover tmp file keeps its old mode through O_CREAT: set it before writing
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "muxlab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(lab_name: str) -> tuple[bytes, bytes]:
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name(f"muxlab {lab_name} CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _node(cn: str, ca_cert: x509.Certificate, ca_key) -> tuple[bytes, bytes]:
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _valid(d: Path, ca_cert: x509.Certificate, cn: str) -> bool:
    """The node's certificate and key exist, match, name `cn`, and the certificate was signed
    by this CA (a CA made anew after its key was lost invalidates every certificate, which
    are then issued again)."""
    try:
        cert = x509.load_pem_x509_certificate((d / NODE_CERT).read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        key = serialization.load_pem_private_key((d / NODE_KEY).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    pub = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return (cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
            and cert.public_key().public_bytes(*pub) == key.public_key().public_bytes(*pub))


def ensure_pki(folder: Path, lab) -> Path:
    """Create what is missing of the lab's PKI in `folder / PKI_FOLDER`; returns that directory."""
    top = Path(folder) / PKI_FOLDER
    top.mkdir(parents=True, exist_ok=True)
    os.chmod(top, 0o700)
    ca_crt, ca_key_path = top / CA_CERT, top / CA_KEY
    if not (ca_crt.exists() and ca_key_path.exists()):
        cert_pem, key_pem = _ca(getattr(lab, "name", "lab"))
        _write(ca_key_path, key_pem, 0o600)
        _write(ca_crt, cert_pem, 0o644)
    ca_pem = ca_crt.read_bytes()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    token_path = top / API_TOKEN
    if not token_path.exists() or not token_path.read_text().strip():
        _write(token_path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
    token = token_path.read_bytes()
    for name in node_names(lab):
        d = top / name
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)   # bound read-only into the node's container (it runs as root)
        if not (d / CA_CERT).exists() or (d / CA_CERT).read_bytes() != ca_pem:
            _write(d / CA_CERT, ca_pem, 0o644)
        if not _valid(d, ca_cert, name):
            cert_pem, key_pem = _node(name, ca_cert, ca_key)
            _write(d / NODE_KEY, key_pem, 0o600)
            _write(d / NODE_CERT, cert_pem, 0o644)
        if name in lab.managers and (not (d / API_TOKEN).exists() or (d / API_TOKEN).read_bytes() != token):
            _write(d / API_TOKEN, token, 0o600)
    return top
