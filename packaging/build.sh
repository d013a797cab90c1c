#!/usr/bin/env bash
# Builds into OUT (default dist/): the wheel and sdist, a single-file zipapp (shiv) that runs on a
# bare python3, and a .deb holding that zipapp, the systemd unit and the sample config.
#
#   bash packaging/build.sh [OUT]
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3). It must be CPython and
# have the `build` and `shiv` modules (pip install -e '.[test]'). The zipapp bundles the native
# wheels for that interpreter's version and this machine's architecture, so the .deb depends on
# exactly that python3 minor version and has this machine's architecture.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGING=$ROOT/packaging
NAME=postfix-rest-api-connector
OUT=${1:-$ROOT/dist}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

die() {
    echo "packaging/build.sh: $*" >&2
    exit 1
}

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import sys; sys.exit(sys.implementation.name != "cpython")' \
    || die "$PYTHON is not CPython"
for module in build shiv; do
    "$PYTHON" -c "import $module" 2>/dev/null \
        || die "$PYTHON lacks the '$module' module: pip install -e '${ROOT}[test]'"
done
for tool in dpkg-deb dpkg; do
    command -v "$tool" >/dev/null || die "$tool not found: the .deb needs Debian's dpkg"
done
PY_MINOR=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PY_NEXT=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/src/postfix_rest_api_connector/__init__.py")
[ -n "$VERSION" ] || die "no __version__ in src/postfix_rest_api_connector/__init__.py"
# PEP 440 pre-releases sort before the release in dpkg only with a tilde: 1.0rc1 -> 1.0~rc1.
DEB_VERSION=$(sed -E 's/\.?(a|b|rc|dev)([0-9]*)/~\1\2/g' <<<"$VERSION")
ARCH=$(dpkg --print-architecture)

# The request path compiled with mypyc (setup.py), or the build fails: the .deb is what runs in
# production. POSTFIX_REST_API_CONNECTOR_COMPILE=0 builds the interpreted, pure-Python wheel.
export POSTFIX_REST_API_CONNECTOR_COMPILE=${POSTFIX_REST_API_CONNECTOR_COMPILE:-1}
if [ "$POSTFIX_REST_API_CONNECTOR_COMPILE" = 0 ]; then
    TAG=py3-none-any
else
    command -v gcc >/dev/null || die "gcc not found: compiling needs it (apt-get install gcc)"
    "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || die "$PYTHON has no C headers: compiling needs them (apt-get install python3-dev)"
    TAG=$("$PYTHON" -c 'import sys, sysconfig
abi = f"cp{sys.version_info[0]}{sys.version_info[1]}"
print(f"{abi}-{abi}-" + sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
fi

echo "== wheel and sdist ($VERSION, $TAG)"
"$PYTHON" -m build --outdir "$OUT" "$ROOT"
WHEEL=$OUT/postfix_rest_api_connector-$VERSION-$TAG.whl
[ -f "$WHEEL" ] || die "the build did not produce $WHEEL"

echo "== zipapp"
# --python: the .deb's python3, without the user's site-packages (-s) or PYTHON* variables (-E).
# --compile-pyc: the first run (per build) unpacks and byte-compiles once, later starts are fast.
# --only-binary: every dependency from a wheel (manylinux for the native ones), nothing compiled.
PYZ=$OUT/$NAME-$VERSION.pyz
"$PYTHON" -m shiv \
    --console-script "$NAME" \
    --output-file "$PYZ" \
    --python "/usr/bin/python3 -sE" \
    --compile-pyc \
    --reproducible \
    "$WHEEL" --only-binary=:all:

echo "== deb"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
DOC=$STAGE/usr/share/doc/$NAME
install -d -m 0755 "$STAGE" "$STAGE/DEBIAN" "$DOC"
install -D -m 0755 "$PYZ" "$STAGE/usr/bin/$NAME"
install -D -m 0644 "$PACKAGING/$NAME.service" "$STAGE/lib/systemd/system/$NAME.service"
install -D -m 0644 "$PACKAGING/config.json" "$STAGE/etc/$NAME/config.json"
install -m 0644 "$PACKAGING/README.md" "$DOC/README.Debian"
install -m 0644 "$ROOT/README.md" "$DOC/README.md"
"$PYTHON" - "$PYZ" >"$DOC/copyright" <<'PY'
"""A copyright file that also names every library bundled in the zipapp and its licence."""

import sys
import zipfile
from email.parser import HeaderParser

print("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
print("Upstream-Name: postfix-rest-api-connector")
print()
print("Files: *")
print("Copyright: the postfix-rest-api-connector authors")
print("License: MIT")
print()
print("Comment: /usr/bin/postfix-rest-api-connector is a zipapp bundling these Python")
print(" distributions, each under its own licence:")
with zipfile.ZipFile(sys.argv[1]) as archive:
    for name in sorted(archive.namelist()):
        if name.startswith("site-packages/") and name.endswith(".dist-info/METADATA"):
            meta = HeaderParser().parsestr(archive.read(name).decode("utf-8", "replace"))
            licence = meta.get("License-Expression") or meta.get("License") or ""
            if not licence or "\n" in licence or len(licence) > 60:
                classifiers = meta.get_all("Classifier") or []
                found = [c.rsplit(" :: ", 1)[1] for c in classifiers if c.startswith("License ::")]
                licence = ", ".join(found) or "see its METADATA"
            print(f" {meta['Name']} {meta['Version']}: {licence}")
PY
install -m 0755 "$PACKAGING/deb/postinst" "$PACKAGING/deb/prerm" "$PACKAGING/deb/postrm" \
    "$STAGE/DEBIAN/"
echo "/etc/$NAME/config.json" >"$STAGE/DEBIAN/conffiles"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: $NAME
Version: $DEB_VERSION
Architecture: $ARCH
Maintainer: ${DEB_MAINTAINER:-postfix-rest-api-connector maintainers <root@localhost>}
Installed-Size: $INSTALLED_SIZE
Depends: python3 (>= $PY_MINOR), python3 (<< $PY_NEXT)
Suggests: postfix
Section: mail
Priority: optional
Description: answer Postfix lookups and policy requests from a REST API
 A daemon that speaks Postfix's tcp_table(5), socketmap_table(5) and policy
 delegation protocols and answers each request from an HTTP REST API.
 .
 Ships as a single zipapp with its libraries bundled, a hardened systemd unit
 (not enabled on install) and a sample config in /etc/$NAME.
EOF
DEB=$OUT/${NAME}_${DEB_VERSION}_$ARCH.deb
dpkg-deb --root-owner-group --build "$STAGE" "$DEB"

echo "== built"
ls -l "$WHEEL" "$OUT/postfix_rest_api_connector-$VERSION.tar.gz" "$PYZ" "$DEB"
