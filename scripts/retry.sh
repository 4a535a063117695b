# Sourced by the setup scripts: `retry <command...>` runs a network step (apt, pip, npm) again
# after a pause when it fails. Why: package mirrors drop connections now and then (a CI run once
# failed because pip could not resume one 51 MB model wheel past 30.9 MB six times in a row), and
# one dropped download must not fail a fresh install. Steps are idempotent, so a rerun only fetches
# what is missing (pip keeps finished wheels in its cache).
retry() {
    local attempt=1 max="${VOXGATE_SETUP_ATTEMPTS:-4}" pause="${VOXGATE_SETUP_RETRY_PAUSE_S:-15}"
    until "$@"; do
        if [ "$attempt" -ge "$max" ]; then
            echo "retry: '$*' failed $attempt times; giving up" >&2
            return 1
        fi
        echo "retry: '$*' failed (attempt $attempt of $max); trying again in ${pause}s" >&2
        sleep "$pause"
        attempt=$((attempt + 1))
        pause=$((pause * 2))
    done
}
