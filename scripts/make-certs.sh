#!/usr/bin/env bash
# Makes a private CA and one server and one client certificate for nbdtunnel's mutual TLS, in the
# directory layout libvirt and QEMU's tls-creds-x509 use, with the openssl command-line tool.
#
#   scripts/make-certs.sh DIR [--hostname NAME]... [--ip ADDR]... [--days N] [--client-cn CN]
#                             [--server-cn CN] [--org ORG] [--key-type rsa|ec] [--force]
#
# Writes into DIR (created if missing, mode 0700):
#   ca-cert.pem      the CA certificate (basicConstraints critical CA:TRUE, pathlen:0)
#   ca-key.pem       the CA's private key (0600) — keep it off the hosts if you can
#   server-cert.pem  for `nbdtunnel dest` (and a QEMU NBD server): extendedKeyUsage serverAuth,
#   server-key.pem     subjectAltName = every --hostname and --ip (0600)
#   client-cert.pem  for `nbdtunnel source` / `migrate` (and a QEMU NBD client): extendedKeyUsage
#   client-key.pem     clientAuth, subject CN = --client-cn (0600)
#   dh-params.pem    the RFC 7919 ffdhe3072 group (public). Only TLS 1.2 DHE suites use it, but a
#                    QEMU NBD server whose dir lacks it generates fresh DH parameters at every
#                    start, which takes seconds of CPU.
# One directory with all of them serves both roles and QEMU. For two hosts, copy ca-cert.pem and
# the server-* files to the destination and ca-cert.pem and the client-* files to the source.
#
# Options:
#   --hostname NAME   a DNS name in the server certificate's subjectAltName (repeatable)
#   --ip ADDR         an IPv4 or IPv6 address in the server certificate's subjectAltName (repeatable)
#                     Without either: DNS:localhost, IP:127.0.0.1, IP:::1 (loopback only). The
#                     source checks the name or address it dials against these.
#   --days N          validity of the server and client certificates (default 365; the CA: 10 years)
#   --client-cn CN    the client certificate's common name (default nbdtunnel-client); the DN
#                     `nbdtunnel dest --tls-allowed-dn` matches is "CN=<CN>,O=<ORG>" (GnuTLS order)
#   --server-cn CN    the server certificate's common name (default: the first --hostname or --ip)
#   --org ORG         the organisation (O=) of all three certificates (default nbdtunnel)
#   --key-type T      rsa (default, RSA-3072) or ec (ECDSA P-256); see "Key type" below
#   --force           overwrite existing server/client files (an existing CA is always reused)
#
# An existing ca-cert.pem + ca-key.pem in DIR is reused, so a second run with other --hostname
# values issues a new server and client certificate from the same CA.
#
# Key type. RSA-3072 by default: 128-bit security like P-256 and AES-128, and the key usage libvirt
# and QEMU expect can be stated exactly: both refuse a server or client certificate whose keyUsage
# is critical and lacks keyEncipherment (QEMU's qcrypto_tls_creds_check_cert, libvirt's
# virNetTLSContextCheckCertKeyUsage), and keyEncipherment is an RSA-only usage (RFC 5480 does not
# allow it for EC keys). With RSA, keyUsage is critical digitalSignature+keyEncipherment — what
# libvirt's PKI guide produces, and it also serves TLS 1.2 peers. With --key-type ec the keyUsage is
# digitalSignature (all TLS 1.3 needs) and marked non-critical so those checks pass. The signature
# cost of RSA is paid once per connection handshake; the bulk cipher (AES-GCM) is the same.
#
# Check the result (both are done at the end of this script):
#   openssl verify -CAfile DIR/ca-cert.pem DIR/server-cert.pem DIR/client-cert.pem
#   certtool --verify --load-ca-certificate DIR/ca-cert.pem --infile DIR/server-cert.pem
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "make-certs.sh: $*" >&2; exit 1; }

dir=""
hostnames=()
ips=()
days=365
client_cn="nbdtunnel-client"
server_cn=""
org="nbdtunnel"
key_type="rsa"
force=0
need() { (($# >= 2)) || die "$1 needs a value (see --help)"; }
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --hostname) need "$@"; hostnames+=("$2"); shift ;;
    --ip) need "$@"; ips+=("$2"); shift ;;
    --days) need "$@"; days=$2; shift ;;
    --client-cn) need "$@"; client_cn=$2; shift ;;
    --server-cn) need "$@"; server_cn=$2; shift ;;
    --org) need "$@"; org=$2; shift ;;
    --key-type) need "$@"; key_type=$2; shift ;;
    --force) force=1 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z $dir ]] || die "only one DIR, got '$dir' and '$1'"; dir=$1 ;;
  esac
  shift
done
[[ -n $dir ]] || { usage >&2; die "no DIR given"; }
[[ $days =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive number of days, got '$days'"
[[ $key_type == rsa || $key_type == ec ]] || die "--key-type must be rsa or ec, got '$key_type'"
command -v openssl >/dev/null || die "openssl not found (Debian: apt-get install openssl)"
for v in "$client_cn" "$server_cn" "$org"; do
  # The names go into -subj, where / and , would start a new attribute.
  [[ $v != */* && $v != *,* && $v != *=* ]] || die "'$v': names may not contain / , or ="
done
for h in "${hostnames[@]}"; do
  [[ $h =~ ^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "--hostname '$h' is not a DNS name"
done
for a in "${ips[@]}"; do
  [[ $a =~ ^[0-9.]+$ || $a =~ ^[0-9A-Fa-f:.]+$ ]] && [[ $a == *[.:]* ]] ||
    die "--ip '$a' is not an IPv4 or IPv6 address (names go in --hostname)"
done
if ((${#hostnames[@]} == 0 && ${#ips[@]} == 0)); then
  hostnames=(localhost)
  ips=(127.0.0.1 ::1)
fi
san=""
for h in "${hostnames[@]}"; do san+="${san:+,}DNS:$h"; done
for a in "${ips[@]}"; do san+="${san:+,}IP:$a"; done
[[ -n $server_cn ]] || server_cn=${hostnames[0]:-${ips[0]}}

mkdir -p "$dir" || die "cannot create $dir"
chmod 0700 "$dir"
[[ -w $dir ]] || die "$dir is not writable"
if ((!force)); then
  for f in server-cert.pem server-key.pem client-cert.pem client-key.pem; do
    [[ ! -e $dir/$f ]] || die "$dir/$f exists; --force replaces the server and client files"
  done
fi
umask 077
tmp=$(mktemp -d "$dir/.make-certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A private key of the chosen type, mode 0600 (umask), PKCS#8 PEM (read by OpenSSL and GnuTLS).
genkey() {
  if [[ $key_type == rsa ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$1" 2>/dev/null
  else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  fi || die "openssl could not generate a $key_type key into $1"
  chmod 0600 "$1"
}

if [[ $key_type == rsa ]]; then
  leaf_usage="critical, digitalSignature, keyEncipherment"
else
  leaf_usage="digitalSignature"
fi

if [[ -e $dir/ca-cert.pem || -e $dir/ca-key.pem ]]; then
  [[ -r $dir/ca-cert.pem && -r $dir/ca-key.pem ]] ||
    die "$dir has only one of ca-cert.pem and ca-key.pem; move it away or add the other"
  openssl x509 -in "$dir/ca-cert.pem" -noout 2>/dev/null || die "$dir/ca-cert.pem is not a PEM certificate"
  echo "make-certs.sh: reusing the CA in $dir ($(openssl x509 -in "$dir/ca-cert.pem" -noout -subject))" >&2
else
  genkey "$tmp/ca-key.pem"
  openssl req -new -x509 -key "$tmp/ca-key.pem" -sha256 -days 3650 -set_serial "0x$(openssl rand -hex 16)" \
    -subj "/O=$org/CN=$org CA" -config /dev/null -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -addext "subjectKeyIdentifier=hash" \
    -out "$tmp/ca-cert.pem" 2>"$tmp/err" || die "openssl could not make the CA certificate: $(cat "$tmp/err")"
  mv "$tmp/ca-key.pem" "$tmp/ca-cert.pem" "$dir/"
fi

# issue NAME CN EXTENDED_USAGE [SAN]: NAME-key.pem and NAME-cert.pem signed by the CA.
issue() {
  local name=$1 cn=$2 eku=$3 alt=${4:-}
  genkey "$tmp/$name-key.pem"
  openssl req -new -key "$tmp/$name-key.pem" -subj "/O=$org/CN=$cn" -config /dev/null \
    -out "$tmp/$name.csr" 2>"$tmp/err" || die "openssl could not make the $name request: $(cat "$tmp/err")"
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = $leaf_usage"
    echo "extendedKeyUsage = $eku"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    [[ -z $alt ]] || echo "subjectAltName = $alt"
  } >"$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca-cert.pem" -CAkey "$dir/ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days" -extfile "$tmp/$name.ext" \
    -out "$tmp/$name-cert.pem" 2>"$tmp/err" || die "openssl could not sign the $name certificate: $(cat "$tmp/err")"
  chmod 0644 "$tmp/$name-cert.pem"
  mv -f "$tmp/$name-key.pem" "$tmp/$name-cert.pem" "$dir/"
}

issue server "$server_cn" serverAuth "$san"
issue client "$client_cn" clientAuth
if [[ ! -e $dir/dh-params.pem ]]; then
  openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe3072 -out "$tmp/dh-params.pem" 2>"$tmp/err" ||
    die "openssl could not write the ffdhe3072 DH parameters: $(cat "$tmp/err")"
  chmod 0644 "$tmp/dh-params.pem"
  mv "$tmp/dh-params.pem" "$dir/"
fi
chmod 0644 "$dir/ca-cert.pem"
chmod 0600 "$dir/ca-key.pem"

openssl verify -x509_strict -purpose sslserver -CAfile "$dir/ca-cert.pem" "$dir/server-cert.pem" >/dev/null ||
  die "openssl verify rejects $dir/server-cert.pem"
openssl verify -x509_strict -purpose sslclient -CAfile "$dir/ca-cert.pem" "$dir/client-cert.pem" >/dev/null ||
  die "openssl verify rejects $dir/client-cert.pem"
if command -v certtool >/dev/null; then
  for f in server client; do
    certtool --verify --load-ca-certificate "$dir/ca-cert.pem" --infile "$dir/$f-cert.pem" >"$tmp/err" 2>&1 ||
      die "GnuTLS (certtool --verify) rejects $dir/$f-cert.pem: $(tail -3 "$tmp/err")"
  done
  checked="openssl and GnuTLS"
else
  checked="openssl (certtool not found, GnuTLS not checked)"
fi
echo "make-certs.sh: wrote $dir: CA, server ($server_cn; $san), client (CN=$client_cn,O=$org);" \
  "$key_type keys, valid $days days; verified by $checked" >&2
