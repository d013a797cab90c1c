#!/usr/bin/env bash
# Builds into OUT (default dist/): the wheel and sdist, a single-file zipapp (shiv) that runs on a
# bare python3.X, and a .deb and an .rpm (for EL9) holding that zipapp, the systemd unit and
# the example socket units, the sample config, the man pages, the Grafana dashboard and the
# Prometheus alerting rules.
#
#   bash packaging/build.sh [OUT]
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3). It must be CPython and
# have the `build` and `shiv` modules (pip install -e '.[test]'). The zipapp bundles the native
# wheels for that interpreter's version and this machine's architecture, so both packages depend
# on exactly that Python minor version (the zipapp's interpreter line is /usr/bin/python3.X, which
# Debian and EL9 both have) and have this machine's architecture. The bundled wheels are the ones
# for EL9's glibc 2.34 or older, whatever this machine's glibc is. RPM_RELEASE (default 1) is the
# .rpm's release number.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGING=$ROOT/packaging
NAME=postfix-rest-api-connector
# Socket activation: one socket unit per endpoint of the sample config that has one (enabled by
# the administrator, never by the packages).
SOCKETS=("$NAME-domains.socket" "$NAME-policy.socket")
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
command -v rpmbuild >/dev/null || die "rpmbuild not found: the .rpm needs it (apt-get install rpm)"
PY_MINOR=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/src/postfix_rest_api_connector/__init__.py")
[ -n "$VERSION" ] || die "no __version__ in src/postfix_rest_api_connector/__init__.py"
# PEP 440 pre-releases sort before the release in dpkg and rpm only with a tilde: 1.0rc1 -> 1.0~rc1.
PKG_VERSION=$(sed -E 's/\.?(a|b|rc|dev)([0-9]*)/~\1\2/g' <<<"$VERSION")
ARCH=$(dpkg --print-architecture)
MACHINE=$(uname -m)
RPM_RELEASE=${RPM_RELEASE:-1}

# EL9's glibc is 2.34: no bundled extension module may need a newer one (tests/test_packaging.py
# reads their versioned symbols). pip takes the most specific wheel this machine could run, so
# the tags it may take are named instead: manylinux 2.34 down to 2.18, then manylinux2014 (2.17),
# which pip widens to the older ones itself; linux_ARCH is this project's own compiled wheel.
PLATFORMS=()
for ((minor = 34; minor > 17; minor--)); do
    PLATFORMS+=(--platform "manylinux_2_${minor}_$MACHINE")
done
PLATFORMS+=(--platform "manylinux2014_$MACHINE" --platform "linux_$MACHINE")

# The request path compiled with mypyc (setup.py), or the build fails: the packages are what runs
# in production. POSTFIX_REST_API_CONNECTOR_COMPILE=0 builds the interpreted, pure-Python wheel.
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
# --python: python3.X by its full path, which Debian's python3.X package and EL9's python3.11
# both install (EL9's /usr/bin/python3 is 3.9); without the user's site-packages (-s) or
# PYTHON* variables (-E).
# --compile-pyc: the first run (per build) unpacks and byte-compiles once, later starts are fast.
# --only-binary: every dependency from a wheel (manylinux for the native ones), nothing compiled.
PYZ=$OUT/$NAME-$VERSION.pyz
"$PYTHON" -m shiv \
    --console-script "$NAME" \
    --output-file "$PYZ" \
    --python "/usr/bin/python$PY_MINOR -sE" \
    --compile-pyc \
    --reproducible \
    "$WHEEL" --only-binary=:all: "${PLATFORMS[@]}"

echo "== what both packages hold besides the zipapp, the unit and the config"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
COMMON=$STAGE/common
install -d -m 0755 "$COMMON"
for page in "$NAME.8" "$NAME.json.5"; do
    gzip -9n <"$PACKAGING/man/$page" >"$COMMON/$page.gz"
done
install -m 0644 "$PACKAGING/grafana/$NAME.json" "$COMMON/grafana-dashboard.json"
install -m 0644 "$PACKAGING/prometheus/alerts.yml" "$COMMON/prometheus-alerts.yml"
"$PYTHON" - "$PYZ" >"$COMMON/copyright" <<'PY'
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

echo "== deb"
DEBROOT=$STAGE/deb
DOC=$DEBROOT/usr/share/doc/$NAME
install -d -m 0755 "$DEBROOT" "$DEBROOT/DEBIAN" "$DOC" "$DOC/examples"
install -D -m 0755 "$PYZ" "$DEBROOT/usr/bin/$NAME"
install -D -m 0644 "$PACKAGING/$NAME.service" "$DEBROOT/lib/systemd/system/$NAME.service"
for unit in "${SOCKETS[@]}"; do
    install -m 0644 "$PACKAGING/sockets/$unit" "$DEBROOT/lib/systemd/system/$unit"
done
install -D -m 0644 "$PACKAGING/config.json" "$DEBROOT/etc/$NAME/config.json"
install -D -m 0644 "$COMMON/$NAME.8.gz" "$DEBROOT/usr/share/man/man8/$NAME.8.gz"
install -D -m 0644 "$COMMON/$NAME.json.5.gz" "$DEBROOT/usr/share/man/man5/$NAME.json.5.gz"
install -m 0644 "$PACKAGING/README.md" "$DOC/README.Debian"
install -m 0644 "$ROOT/README.md" "$COMMON/copyright" "$DOC/"
install -m 0644 "$COMMON/grafana-dashboard.json" "$COMMON/prometheus-alerts.yml" "$DOC/examples/"
install -m 0755 "$PACKAGING/deb/postinst" "$PACKAGING/deb/prerm" "$PACKAGING/deb/postrm" \
    "$DEBROOT/DEBIAN/"
echo "/etc/$NAME/config.json" >"$DEBROOT/DEBIAN/conffiles"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$DEBROOT" | cut -f1)
cat >"$DEBROOT/DEBIAN/control" <<EOF
Package: $NAME
Version: $PKG_VERSION
Architecture: $ARCH
Maintainer: ${DEB_MAINTAINER:-postfix-rest-api-connector maintainers <root@localhost>}
Installed-Size: $INSTALLED_SIZE
Depends: python$PY_MINOR
Suggests: postfix
Section: mail
Priority: optional
Description: answer Postfix lookups and policy requests from a REST API
 A daemon that speaks Postfix's tcp_table(5), socketmap_table(5) and policy
 delegation protocols and answers each request from an HTTP REST API.
 .
 Ships as a single zipapp with its libraries bundled, a hardened systemd unit
 and example socket units (none enabled on install), a sample config in
 /etc/$NAME, man pages, a Grafana dashboard and Prometheus alerting rules.
EOF
DEB=$OUT/${NAME}_${PKG_VERSION}_$ARCH.deb
dpkg-deb --root-owner-group --build "$DEBROOT" "$DEB"

echo "== rpm"
# Everything rpmbuild reads and writes stays in STAGE: no ~/rpmbuild, no rpm database. The
# payload is gzip, which every rpm reads; the zipapp inside is compressed already.
RPMTOP=$STAGE/rpm
SOURCES=$RPMTOP/SOURCES
install -d -m 0755 "$SOURCES" "$RPMTOP/tmp" "$RPMTOP/db"
install -m 0644 "$PYZ" "$SOURCES/$NAME.pyz"
install -m 0644 "$PACKAGING/$NAME.service" "$PACKAGING/config.json" "$ROOT/README.md" \
    "$COMMON"/* "$SOURCES/"
for unit in "${SOCKETS[@]}"; do
    install -m 0644 "$PACKAGING/sockets/$unit" "$SOURCES/"
done
install -m 0644 "$PACKAGING/README.md" "$SOURCES/README.packaging.md"
RPM=$OUT/$NAME-$PKG_VERSION-$RPM_RELEASE.el9.$MACHINE.rpm
rpmbuild -bb --quiet --target "$MACHINE" \
    --define "_topdir $RPMTOP" \
    --define "_tmppath $RPMTOP/tmp" \
    --define "_dbpath $RPMTOP/db" \
    --define "_rpmdir $OUT" \
    --define "_build_name_fmt $(basename "$RPM")" \
    --define "_binary_payload w6.gzdio" \
    --define "dist .el9" \
    --define "pkg_version $PKG_VERSION" \
    --define "pkg_release $RPM_RELEASE" \
    --define "python_minor $PY_MINOR" \
    "$PACKAGING/$NAME.spec"
[ -f "$RPM" ] || die "rpmbuild did not produce $RPM"

echo "== built"
ls -l "$WHEEL" "$OUT/postfix_rest_api_connector-$VERSION.tar.gz" "$PYZ" "$DEB" "$RPM"
