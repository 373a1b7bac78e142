#!/usr/bin/env bash
# Installs the third-party PSP emulators the integration tests start (tests/support/emulators.rs),
# at pinned versions, into ${PAYGATE_EMULATORS:-$HOME/.cache/paygate-emulators} (outside the
# repository's tracked files):
#   venv/           Python venv with localstripe
#   node/           npm prefix with @stoplight/prism-cli and stripe-stateful-mock
#   installed.stamp the pinned versions, written last; a matching stamp makes this a fast no-op
# Idempotent: run it as often as you like. Needs python3 (3.11) with venv, and node/npm (20).
set -euo pipefail

LOCALSTRIPE_VERSION=1.15.10
PRISM_VERSION=5.14.2
STATEFUL_MOCK_VERSION=0.0.16

DIR="${PAYGATE_EMULATORS:-$HOME/.cache/paygate-emulators}"
STAMP="$DIR/installed.stamp"
WANT="localstripe==$LOCALSTRIPE_VERSION @stoplight/prism-cli@$PRISM_VERSION stripe-stateful-mock@$STATEFUL_MOCK_VERSION"

# The stamp alone is not trusted: the entry points must still be there.
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" \
  && -x "$DIR/venv/bin/python" && -x "$DIR/node/node_modules/.bin/prism" \
  && -f "$DIR/node/node_modules/stripe-stateful-mock/package.json" ]]; then
  exit 0
fi

echo "emulators: installing into $DIR: $WANT" >&2
mkdir -p "$DIR"
rm -f "$STAMP"

# localstripe in its own venv.
if [[ ! -x "$DIR/venv/bin/python" ]]; then
  python3 -m venv "$DIR/venv"
fi
"$DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "localstripe==$LOCALSTRIPE_VERSION"
"$DIR/venv/bin/python" - "$LOCALSTRIPE_VERSION" <<'PY'
import sys
from importlib.metadata import version
got = version("localstripe")
if got != sys.argv[1]:
    sys.exit(f"emulators: localstripe {got} installed, {sys.argv[1]} wanted")
PY

# Prism and stripe-stateful-mock under one npm prefix, exact versions.
mkdir -p "$DIR/node"
npm install --prefix "$DIR/node" --no-audit --no-fund --save-exact --loglevel=error \
  "@stoplight/prism-cli@$PRISM_VERSION" "stripe-stateful-mock@$STATEFUL_MOCK_VERSION" >/dev/null
for pkg in "@stoplight/prism-cli:$PRISM_VERSION" "stripe-stateful-mock:$STATEFUL_MOCK_VERSION"; do
  name="${pkg%:*}"
  want="${pkg##*:}"
  got="$(node -p "require('$DIR/node/node_modules/$name/package.json').version")"
  if [[ "$got" != "$want" ]]; then
    echo "emulators: $name $got installed, $want wanted" >&2
    exit 1
  fi
done

echo "$WANT" >"$STAMP"
echo "emulators: ready in $DIR" >&2
