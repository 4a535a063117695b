#!/usr/bin/env bash
# Build the voxgate container image for real where no registry is reachable, then smoke-test it.
#
#   1. base: a minimal Debian root made with mmdebstrap (Debian's mirrors are reachable),
#      imported with `podman import` (skipped when that base image exists, or with --base);
#   2. image: `podman build --isolation=chroot` of deploy/Dockerfile (plain container runs
#      hit cgroup / rlimit limits on our machines; chroot isolation works);
#   3. smoke: a real LibriVox clip copied into a container of the image and transcribed there
#      with `buildah run --isolation chroot` as the image's non-root user; the printed text
#      must equal the clip's reference transcript (normalised: case, punctuation, hyphens).
#
# Slow (minutes: PyPI downloads, the model packs): a CI job of its own, not the test run.
# Every step's seconds and the image size are printed, the last line as one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: scripts/build_image.sh [options]
  --variant cpu|gpu     image variant (default cpu); gpu adds onnxruntime-gpu (deploy/README.md)
  --models LIST         offline pack extras baked in (default models-en; "" for none: no smoke)
  --extras LIST         runtime extras (default: the Dockerfile's EXTRAS)
  --base IMAGE          use this base image instead of making one with mmdebstrap
  --suite NAME          Debian suite for the mmdebstrap base (default bookworm)
  --mirror URL          Debian mirror for mmdebstrap (default: mmdebstrap's own)
  --rebuild-base        make the mmdebstrap base again even if it exists
  --tag TAG             image tag (default localhost/voxgate:VARIANT)
  --clip WAV            clip for the smoke test (default LibriVox ...-0880.wav, with its
                        reference line from the clip directory's `transcription` file)
  --ca-bundle FILE      CA bundle pip trusts during the build (build secret, not in the image);
                        default: the host's bundle when the host trusts a local CA
                        (/usr/local/share/ca-certificates/*.crt: a TLS-inspecting proxy)
  --no-ca-bundle        never pass a CA bundle
  --no-smoke            build only
  --prune               remove dangling images (earlier builds' leftovers) afterwards
EOF
}

variant=cpu models=models-en extras="" base="" suite=bookworm mirror="" rebuild_base=0 tag=""
clip=/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav
ca_bundle=auto smoke=1 prune=0
while [ $# -gt 0 ]; do
    case "$1" in
        --variant) variant="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --extras) extras="$2"; shift 2 ;;
        --base) base="$2"; shift 2 ;;
        --suite) suite="$2"; shift 2 ;;
        --mirror) mirror="$2"; shift 2 ;;
        --rebuild-base) rebuild_base=1; shift ;;
        --tag) tag="$2"; shift 2 ;;
        --clip) clip="$2"; shift 2 ;;
        --ca-bundle) ca_bundle="$2"; shift 2 ;;
        --no-ca-bundle) ca_bundle=""; shift ;;
        --no-smoke) smoke=0; shift ;;
        --prune) prune=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build_image.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$variant" in cpu|gpu) ;; *) echo "build_image.sh: --variant must be cpu or gpu, not '$variant'" >&2; exit 2 ;; esac
tag="${tag:-localhost/voxgate:${variant}}"

needed=(podman buildah python3)
if [ -z "$base" ]; then needed+=(mmdebstrap); fi
for tool in "${needed[@]}"; do
    if ! command -v "$tool" >/dev/null; then
        echo "build_image.sh: '$tool' is not installed (Debian: apt-get install mmdebstrap podman buildah)" >&2
        exit 2
    fi
done
if [ "$smoke" = 1 ] && [[ ",${models}," != *",models-en,"* ]]; then
    echo "build_image.sh: the smoke test needs the models-en pack; without it use --no-smoke" >&2
    exit 2
fi
if [ "$smoke" = 1 ] && [ ! -f "$clip" ]; then
    echo "build_image.sh: smoke clip '$clip' not found (Debian: apt-get install pocketsphinx-testdata)" >&2
    exit 2
fi
if [ "$ca_bundle" = auto ]; then
    ca_bundle=""
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
        && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
        ca_bundle=/etc/ssl/certs/ca-certificates.crt
    fi
fi
if [ -n "$ca_bundle" ] && [ ! -s "$ca_bundle" ]; then
    echo "build_image.sh: CA bundle '$ca_bundle' not found or empty" >&2
    exit 2
fi

declare -A seconds=()
timed() {  # timed NAME COMMAND...: run it, remember and print its wall time
    local name="$1" start=$SECONDS
    shift
    "$@"
    seconds[$name]=$((SECONDS - start))
    echo "build_image.sh: step '$name' took ${seconds[$name]} s" >&2
}

# ----------------------------------------------------------------------- 1. the base image
make_base() {
    local work
    work="$(mktemp -d "${TMPDIR:-/tmp}/voxgate-base.XXXXXX")"
    # what scripts/setup.sh expects on a fresh machine (Python 3.11+ with venv); docs and man
    # pages left out as in Debian's -slim images (copyright files kept)
    mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$suite" "$work/rootfs.tar" ${mirror:+"$mirror"}
    podman import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$base" >/dev/null
    rm -rf "$work"
}
if [ -z "$base" ]; then
    base="localhost/voxgate-base:${suite}"
    if [ "$rebuild_base" = 1 ] || ! podman image exists "$base"; then
        timed base make_base
    else
        echo "build_image.sh: base image $base exists (--rebuild-base makes it again)" >&2
        seconds[base]=0
    fi
fi

# ----------------------------------------------------------------------- 2. the image
build_args=(--build-arg "BASE_IMAGE=${base}" --build-arg "VARIANT=${variant}"
            --build-arg "MODELS=${models}")
if [ -n "$extras" ]; then build_args+=(--build-arg "EXTRAS=${extras}"); fi
if [ -n "$ca_bundle" ]; then build_args+=(--secret "id=pip-ca,src=${ca_bundle}"); fi
# --ignorefile: podman 4.3 does not pick up deploy/Dockerfile.dockerignore by itself (newer
# podman and docker do); without it the local .venv and caches would enter the context.
# --format docker: the OCI image format has no HEALTHCHECK (podman drops it with a warning)
timed build podman build --isolation=chroot --pull=never --format docker -f deploy/Dockerfile \
    --ignorefile deploy/Dockerfile.dockerignore "${build_args[@]}" -t "$tag" .
size="$(podman image inspect --format '{{.Size}}' "$tag")"
echo "build_image.sh: $tag is $((size / 1000000)) MB" >&2

# ----------------------------------------------------------------------- 3. smoke test
smoke_ctr=""
remove_smoke_container() {  # also when the smoke test fails half-way
    if [ -n "$smoke_ctr" ]; then buildah rm "$smoke_ctr" >/dev/null || true; fi
}
trap remove_smoke_container EXIT
normalise() {  # lower case words only: "He was not an ill-disposed young man." -> he was ...
    python3 -c 'import re,sys; print(" ".join(re.findall(r"[a-z0-9]+(?:'"'"'[a-z]+)?", sys.stdin.read().lower().replace("-", " "))))'
}
smoke_test() {
    local clip_id expected heard
    clip_id="$(basename "$clip" .wav)"
    expected="$(sed -n "s/^<s> \(.*\) <\/s> (${clip_id})\$/\1/p" "$(dirname "$clip")/transcription" 2>/dev/null || true)"
    if [ -z "$expected" ]; then
        echo "build_image.sh: no reference line for ${clip_id} in $(dirname "$clip")/transcription" >&2
        return 1
    fi
    smoke_ctr="$(buildah from --pull=never "$tag")"
    buildah copy --chown 10001:10001 "$smoke_ctr" "$clip" /tmp/smoke.wav >/dev/null
    # as the image's own user (10001), the way `voxgate serve` runs in it
    heard="$(buildah run --isolation chroot "$smoke_ctr" -- voxgate transcribe --format text /tmp/smoke.wav)"
    buildah rm "$smoke_ctr" >/dev/null
    smoke_ctr=""
    echo "build_image.sh: smoke: heard '${heard}'" >&2
    if [ "$(printf '%s' "$heard" | normalise)" != "$(printf '%s' "$expected" | normalise)" ]; then
        echo "build_image.sh: smoke FAILED: expected '${expected}'" >&2
        return 1
    fi
    echo "build_image.sh: smoke passed: the image transcribed ${clip_id} as its reference" >&2
}
if [ "$smoke" = 1 ]; then timed smoke smoke_test; else seconds[smoke]=0; fi

if [ "$prune" = 1 ]; then podman image prune -f >/dev/null; fi
printf '{"tag": "%s", "variant": "%s", "models": "%s", "base_image": "%s", "base_s": %s, "build_s": %s, "smoke_s": %s, "size_bytes": %s, "smoke": %s}\n' \
    "$tag" "$variant" "$models" "$base" "${seconds[base]:-0}" "${seconds[build]}" \
    "${seconds[smoke]}" "$size" "$([ "$smoke" = 1 ] && echo true || echo false)"
