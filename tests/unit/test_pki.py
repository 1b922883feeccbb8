"""The lab's PKI (muxlab/pki.py): one CA, a certificate per infrastructure node naming it."""
import ssl
import stat

import pytest

pytest.importorskip("cryptography")
from cryptography import x509   # noqa: E402
from cryptography.hazmat.primitives import serialization   # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec   # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID   # noqa: E402

from muxlab.datapath.conventions import API_TOKEN, CA_CERT, NODE_CERT, NODE_KEY, OPERATOR, PKI_FOLDER   # noqa: E402
from muxlab.pki import CA_KEY, ensure_pki, node_names   # noqa: E402

from .conftest import fabric   # noqa: E402


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files(top):
    return {p.relative_to(top): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lab():
    return fabric()


@pytest.fixture
def pki(tmp_path, lab):
    return ensure_pki(tmp_path, lab)


def test_layout_one_directory_per_infrastructure_node_and_the_operator(pki, lab, tmp_path):
    assert pki == tmp_path / PKI_FOLDER
    names = node_names(lab)
    assert set(names) == {*lab.managers, *(m.name for m in lab.muxes), *(h.name for h in lab.hosts), OPERATOR}
    assert {p.name for p in pki.iterdir() if p.is_dir()} == set(names)
    assert not any((pki / v.name).exists() for v in lab.vms)   # tenants get no identity on the control plane
    for name in names:
        assert {p.name for p in (pki / name).iterdir()} >= {CA_CERT, NODE_CERT, NODE_KEY}
        assert (pki / name / CA_CERT).read_bytes() == (pki / CA_CERT).read_bytes()
        assert ((pki / name / API_TOKEN).exists()) == (name in lab.managers)


def test_keys_and_token_are_private(pki, lab):
    assert mode(pki / CA_KEY) == 0o600
    assert mode(pki / API_TOKEN) == 0o600
    for name in node_names(lab):
        assert mode(pki / name / NODE_KEY) == 0o600
    for m in lab.managers:
        assert mode(pki / m / API_TOKEN) == 0o600
        assert (pki / m / API_TOKEN).read_bytes() == (pki / API_TOKEN).read_bytes()
    assert len((pki / API_TOKEN).read_text().strip()) >= 40


def test_each_certificate_names_its_node_and_chains_to_the_lab_ca(pki, lab):
    ca = x509.load_pem_x509_certificate((pki / CA_CERT).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    serials = set()
    for name in node_names(lab):
        cert = x509.load_pem_x509_certificate((pki / name / NODE_CERT).read_bytes())
        cert.verify_directly_issued_by(ca)   # raises when not signed by the lab CA
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH} <= set(eku)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
        serials.add(cert.serial_number)
    assert len(serials) == len(node_names(lab))


def test_openssl_accepts_the_chain_and_each_key_matches_its_certificate(pki, lab):
    """What ovsdb-server and the IDL do with these files: a TLS context loads the pair
    (which fails on a key that is not the certificate's) and trusts the CA."""
    for name in node_names(lab):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(pki / name / CA_CERT))
        ctx.load_cert_chain(str(pki / name / NODE_CERT), str(pki / name / NODE_KEY))


def test_idempotent_nothing_changes_on_a_second_run(tmp_path, lab):
    top = ensure_pki(tmp_path, lab)
    before = files(top)
    assert ensure_pki(tmp_path, lab) == top
    assert files(top) == before


def test_adds_what_is_missing_and_keeps_the_rest(tmp_path, lab):
    top = ensure_pki(tmp_path, lab)
    before = files(top)
    host = lab.hosts[0].name
    (top / host / NODE_KEY).unlink()            # a lost key: that node is issued a new pair
    (top / lab.muxes[0].name / CA_CERT).unlink()  # a lost copy of the CA: copied again
    ensure_pki(tmp_path, lab)
    after = files(top)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {p.relative_to(top) for p in (top / host / NODE_KEY, top / host / NODE_CERT)}
    assert (top / lab.muxes[0].name / CA_CERT).read_bytes() == (top / CA_CERT).read_bytes()


def test_a_new_ca_reissues_every_certificate(tmp_path, lab):
    top = ensure_pki(tmp_path, lab)
    old = (top / lab.managers[0] / NODE_CERT).read_bytes()
    (top / CA_KEY).unlink()
    ensure_pki(tmp_path, lab)
    ca = x509.load_pem_x509_certificate((top / CA_CERT).read_bytes())
    cert = x509.load_pem_x509_certificate((top / lab.managers[0] / NODE_CERT).read_bytes())
    assert cert.public_bytes(serialization.Encoding.PEM) != old
    cert.verify_directly_issued_by(ca)
    assert (top / lab.hosts[0].name / CA_CERT).read_bytes() == (top / CA_CERT).read_bytes()
