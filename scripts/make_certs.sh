#!/usr/bin/env bash
# Certificates for a TLS Dask cluster: one CA, and a key pair per role signed by it.
#
#   scripts/make_certs.sh [OUT_DIR] [DAYS]        defaults: ./certs, 7 days
#
# Writes OUT_DIR/ca.pem (every party's trust anchor), ca.key (signs new pairs: keep it off
# the cluster), and scheduler.{pem,key}, worker.{pem,key}, client.{pem,key}. Dask checks
# the chain, not host names (mutual TLS: the scheduler refuses a client without a pair
# signed by this CA), so one set serves any host. Rotate by running it again into a new
# folder and restarting the cluster with it: pairs of the old CA are refused from then on.
# Never commit the output (certs/ is in .gitignore). Needs the openssl command.
set -euo pipefail

out="${1:-certs}"
days="${2:-7}"
if ! [[ "$days" =~ ^[0-9]+$ ]]; then
  echo "make_certs.sh: DAYS must be a whole number of days, got '$days'" >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "make_certs.sh: the openssl command is needed" >&2; exit 2; }
mkdir -p "$out"
umask 077  # keys readable by their owner only
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$((days + 1))" \
  -subj "/CN=distrib dask CA" -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
for role in scheduler worker client; do
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=distrib dask $role" \
    -keyout "$tmp/$role.key" -out "$tmp/$role.csr" 2>/dev/null
  openssl x509 -req -sha256 -days "$days" -in "$tmp/$role.csr" \
    -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial -out "$tmp/$role.pem" 2>/dev/null
done
chmod 644 "$tmp"/*.pem
for f in ca.pem ca.key scheduler.pem scheduler.key worker.pem worker.key client.pem client.key; do
  mv "$tmp/$f" "$out/$f"
done
echo "wrote $out/: ca.pem ca.key {scheduler,worker,client}.{pem,key}, valid $days day(s)"
