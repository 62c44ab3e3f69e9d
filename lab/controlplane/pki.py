"""A lab's certificates and kubeconfigs, made with ``cryptography`` (nothing shells out).

Three CAs, as a kubeadm cluster and virt-operator have them: the cluster CA (client and serving
certificates of the control plane), the front-proxy CA (the aggregator's client certificate for
virt-api's subresource API; virt-api refuses to start without ``--requestheader-client-ca-file``)
and KubeVirt's own CA (virt-api's and virt-controller's serving certificates, the webhooks' and
APIServices' ``caBundle``). Leaves are ECDSA P-256, valid one year; the CAs ten; the
service-account signing key is RSA 2048.

The x509 authenticator maps CN to the user and O to groups, so KubeVirt's identities are
certificates for ``system:serviceaccount:kubevirt:<sa>`` and the RBAC KubeVirt's own code
generates binds them. Private keys and kubeconfigs are written with ``write_secret`` (0600,
O_EXCL, never through a symlink).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from virtproof.core.secretfile import write_secret

KUBEVIRT_NAMESPACE = "kubevirt"
# --service-cluster-ip-range: RFC 2544 benchmarking space, never routed; the kubernetes Service
# gets its first address. Nothing is ever sent there.
SERVICE_CIDR = "198.19.240.0/20"
KUBERNETES_SERVICE_IP = "198.19.240.1"
KUBEVIRT_SERVICE_ACCOUNTS = ("kubevirt-controller", "kubevirt-apiserver", "kubevirt-handler")
# kubeconfig name -> certificate it authenticates with
KUBECONFIGS: dict[str, str] = {
    "admin": "admin",
    "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler",
    "virt-controller": "kubevirt-controller",
    "virt-api": "kubevirt-apiserver",
    "virt-handler": "kubevirt-handler",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate a little clock skew


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_encipherment=not ca, content_commitment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    """The files of one lab's PKI in ``directory`` (``<name>.crt``, ``<name>.key``, ``sa.pub``)."""

    directory: Path

    def crt(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    def pem(self, name: str) -> bytes:
        return self.crt(name).read_bytes()

    def b64(self, name: str) -> str:
        return base64.b64encode(self.pem(name)).decode()


class _Maker:
    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.now = _now()

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.pki.crt(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_secret(self.pki.key(name), _key_pem(key), replace=True)

    def ca(self, name: str, cn: str) -> _Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.now).not_valid_after(self.now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(_usage(ca=True), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        self._write(name, cert, key)
        return _Issuer(cert, key)

    def leaf(self, name: str, issuer: _Issuer, cn: str, *, orgs: Sequence[str] = (), dns: Sequence[str] = (),
             ips: Sequence[str] = (), server: bool = False, client: bool = False) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        eku = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(issuer.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(self.now).not_valid_after(self.now + dt.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(_usage(ca=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                                  critical=False))
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        self._write(name, builder.sign(issuer.key, hashes.SHA256()), key)


def make_pki(directory: Path) -> Pki:
    """Every certificate and key the lab's processes use, fresh, in ``directory`` (made 0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = Pki(directory)
    make = _Maker(pki)
    cluster = make.ca("ca", "virtproof-lab-ca")
    front = make.ca("front-proxy-ca", "virtproof-lab-front-proxy-ca")
    kubevirt = make.ca("kubevirt-ca", "kubevirt.io")  # as virt-operator's Secret kubevirt/kubevirt-ca
    ns = KUBEVIRT_NAMESPACE
    make.leaf("apiserver", cluster, "kube-apiserver", server=True,
              dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local", "localhost"],
              ips=["127.0.0.1", KUBERNETES_SERVICE_IP])
    make.leaf("apiserver-kubelet-client", cluster, "kube-apiserver-kubelet-client",
              orgs=["kubeadm:cluster-admins"], client=True)
    make.leaf("front-proxy-client", front, "front-proxy-client", client=True)
    make.leaf("admin", cluster, "kubernetes-admin", orgs=["system:masters"], client=True)
    make.leaf("kube-controller-manager", cluster, "system:kube-controller-manager", client=True)
    make.leaf("kube-scheduler", cluster, "system:kube-scheduler", client=True)
    for sa in KUBEVIRT_SERVICE_ACCOUNTS:
        make.leaf(sa, cluster, f"system:serviceaccount:{ns}:{sa}",
                  orgs=["system:serviceaccounts", f"system:serviceaccounts:{ns}"], client=True)
    # virt-api's serving certificate must name 127.0.0.1 (the webhooks' url:) and
    # virt-api.kubevirt.svc (the ServerName the aggregator verifies for the APIService).
    make.leaf("virt-api", kubevirt, f"virt-api.{ns}.svc", server=True,
              dns=["virt-api", f"virt-api.{ns}", f"virt-api.{ns}.svc", f"virt-api.{ns}.svc.cluster.local",
                   "localhost"], ips=["127.0.0.1"])
    make.leaf("virt-controller", kubevirt, f"virt-controller.{ns}.svc", server=True,
              dns=["virt-controller", f"virt-controller.{ns}.svc", "localhost"], ips=["127.0.0.1"])
    make.leaf("virt-handler-client", kubevirt, "kubevirt.io:system:client:virt-handler", client=True)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_secret(pki.sa_key, _key_pem(sa_key), replace=True)
    pki.sa_pub.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def kubeconfig(server: str, ca_pem: bytes, user: str, *, cert_pem: bytes | None = None,
               key_pem: bytes | None = None, token: str | None = None) -> bytes:
    """A kubeconfig with one cluster, user and context (credentials embedded)."""
    creds: dict[str, str] = {}
    if cert_pem is not None and key_pem is not None:
        creds = {"client-certificate-data": base64.b64encode(cert_pem).decode(),
                 "client-key-data": base64.b64encode(key_pem).decode()}
    if token is not None:
        creds["token"] = token
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server,
                                                 "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": f"{user}@lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": f"{user}@lab",
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


def write_kubeconfigs(pki: Pki, directory: Path, server: str) -> dict[str, Path]:
    """One kubeconfig per component identity (``KUBECONFIGS``), 0600, in ``directory``."""
    out = {}
    ca = pki.pem("ca")
    for name, cert in KUBECONFIGS.items():
        text = kubeconfig(server, ca, name, cert_pem=pki.pem(cert), key_pem=pki.key(cert).read_bytes())
        out[name] = write_secret(directory / f"{name}.kubeconfig", text, replace=True)
    return out
