#!/usr/bin/env bash
# A throwaway CA and certificates for the compose TLS variant (compose.tls.yaml):
#   deploy/docker/make-tls-certs.sh [DIR]       (default: deploy/docker/tls)
# writes DIR/ca.crt, DIR/ca.key and DIR/node-{a,b,c}.{crt,key}; each node certificate names the
# node (its compose host name), localhost and 127.0.0.1, for server and client auth. Refuses to
# overwrite an existing ca.key. Needs openssl. Not for production: use your own CA there.
set -euo pipefail
dir="${1:-$(dirname "$0")/tls}"
mkdir -p "$dir"
if [[ -e "$dir/ca.key" ]]; then
  echo "make-tls-certs: $dir/ca.key exists; remove $dir first to make new certificates" >&2
  exit 1
fi
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=dwbase compose devnet CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
for n in node-a node-b node-c; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" \
    -keyout "$dir/$n.key" -out "$dir/$n.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' "$n" >"$dir/$n.ext"
  openssl x509 -req -in "$dir/$n.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 397 -extfile "$dir/$n.ext" -out "$dir/$n.crt" 2>/dev/null
  rm -f "$dir/$n.csr" "$dir/$n.ext"
done
rm -f "$dir/ca.srl"
# The container runs as uid 10001: the keys must be readable by it through the read-only mount.
chmod 0644 "$dir"/*.crt
chmod 0644 "$dir"/node-*.key
echo "make-tls-certs: wrote $dir/ca.crt and node-{a,b,c}.{crt,key}"
