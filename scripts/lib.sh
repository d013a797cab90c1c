# Shared by scripts/demo.sh and scripts/test.sh: a virtual environment and Debian's Postfix.
# Sourced, not run. Works on a fresh Debian machine with Python >= 3.11, as root or with sudo.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

pick_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$candidate"
            return 0
        fi
    done
    echo "no Python >= 3.11 found: install python3 (Debian bookworm ships 3.11)" >&2
    return 1
}

# make_venv DIR: a virtual environment in DIR (kept if there is one), with a current pip.
make_venv() {
    local python dir=$1
    python=$(pick_python)
    if [ ! -x "$dir/bin/python" ]; then
        if ! "$python" -m venv "$dir" 2>/dev/null; then
            rm -rf "$dir"
            apt_install python3-venv
            "$python" -m venv "$dir"
        fi
    fi
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
}

# ensure_venv EXTRA: create $VENV if needed and install the project (with extras EXTRA, if any),
# editable and interpreted (setup.py): a compiled module would shadow every later edit of its
# source, so any left in src/ by a by-hand build goes first.
ensure_venv() {
    local extra=${1:-}
    make_venv "$VENV"
    find "$ROOT/src" -name '*.so' -delete
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT${extra:+[$extra]}"
}

# ensure_compiled_venv DIR EXTRA: the project as production installs it, the request path
# compiled with mypyc (setup.py), into DIR; installs gcc and Python's headers where missing.
ensure_compiled_venv() {
    local dir=$1 extra=${2:-}
    make_venv "$dir"
    command -v gcc >/dev/null 2>&1 || apt_install gcc libc6-dev
    if ! "$dir/bin/python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        apt_install python3-dev
    fi
    # build/ may hold the compiled modules of an earlier build, which the new wheel would take
    rm -rf "$ROOT/build"
    # pip builds and installs a local project again each time, even at the same version
    POSTFIX_REST_API_CONNECTOR_COMPILE=1 "$dir/bin/python" -m pip install -q \
        --disable-pip-version-check "$ROOT${extra:+[$extra]}"
}

# ensure_postfix: Debian's postfix with "No configuration", so no system instance starts.
ensure_postfix() {
    if ! command -v postmap >/dev/null 2>&1 || [ ! -x /usr/lib/postfix/sbin/master ]; then
        echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
        apt_install postfix
    fi
    # "No configuration" leaves no main.cf, and postmap refuses to run without one. This one
    # only lets postmap run: it enables no network listener of the system's Postfix.
    if [ ! -f /etc/postfix/main.cf ]; then
        printf '%s\n' "# Written by postfix-rest-api-connector's scripts so that postmap runs." \
            "# No network listener; configure Postfix for real with: dpkg-reconfigure postfix" \
            "master_service_disable = inet" | as_root tee /etc/postfix/main.cf >/dev/null
        echo "wrote a minimal /etc/postfix/main.cf (postmap needs one; it enables no listener)"
    fi
}

# ensure_packaging_tools: what tests/test_packaging.py, test_man_pages.py and test_dashboard.py
# run: Debian's rpm (rpmbuild), groff, binutils (readelf), systemd (systemd-analyze), prometheus
# and promtool. The tests
# start their own Prometheus, so the package's service must not run: a policy-rc.d that refuses
# every start is in place during the install (any other one is set aside meanwhile), and on a
# machine run by systemd the unit is disabled and stopped afterwards.
ensure_packaging_tools() {
    local missing=()
    command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
    command -v groff >/dev/null 2>&1 || missing+=(groff-base)
    command -v readelf >/dev/null 2>&1 || missing+=(binutils)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        install_without_starting prometheus.service promtool prometheus
    fi
}

# install_without_starting UNIT COMMAND PACKAGE...: Debian packages whose service must not run
# (the tests start their own servers, on ports of their own): a policy-rc.d that refuses every
# start is in place during the install (any other one is set aside meanwhile), and on a machine
# run by systemd the unit is disabled and stopped afterwards. Fails unless COMMAND is there then.
install_without_starting() {
    local unit=$1 command=$2 policy=/usr/sbin/policy-rc.d
    shift 2
    as_root sh -c "[ ! -e $policy ] || mv $policy $policy.pfx-saved
        printf '#!/bin/sh\nexit 101\n' >$policy && chmod 0755 $policy"
    apt_install "$@" || true
    as_root sh -c "rm -f $policy; [ ! -e $policy.pfx-saved ] || mv $policy.pfx-saved $policy"
    command -v "$command" >/dev/null 2>&1 || { echo "installing $* failed" >&2; return 1; }
    if [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
}

# ensure_redis: Debian's redis-server and redis-cli, for the shared cache tier's tests.
ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        install_without_starting redis-server.service redis-server redis-server
    fi
}

# ensure_nginx: Debian's nginx with the echo module, the benchmarks' API (bench/). policy-rc.d
# keeps Debian's own nginx service from starting on port 80.
ensure_nginx() {
    if ! command -v nginx >/dev/null 2>&1 || [ ! -f /usr/lib/nginx/modules/ngx_http_echo_module.so ]; then
        install_without_starting nginx.service nginx nginx-light libnginx-mod-http-echo
    fi
}
