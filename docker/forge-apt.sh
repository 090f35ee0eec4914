#!/bin/sh
# apt-get install PACKAGES..., through APT_MIRROR when it is set, leaving no package lists behind.
#   APT_MIRROR  scheme://host[:port] put in place of the Ubuntu/Debian hosts (a mirror profile's apt_mirror).
#               It goes into a sed replacement: anything but http(s)://host[:port] is refused first.
#   APT_ETC     where the sources lists live (default /etc/apt; the tests point it at a copy).
set -e
etc="${APT_ETC:-/etc/apt}"
if [ -n "$APT_MIRROR" ]; then
    case "$APT_MIRROR" in
        http://*|https://*) ;;
        *) echo "APT_MIRROR is not http(s)://host[:port]" >&2; exit 1 ;;
    esac
    case "${APT_MIRROR#*://}" in
        ""|*[!A-Za-z0-9.:-]*) echo "APT_MIRROR is not http(s)://host[:port]" >&2; exit 1 ;;
    esac
    for f in "$etc/sources.list" "$etc"/sources.list.d/*; do
        if [ -f "$f" ]; then
            sed -i -E "s#https?://(archive|security|ports)\.ubuntu\.com#$APT_MIRROR#g; s#https?://(deb|security)\.debian\.org#$APT_MIRROR#g" "$f"
        fi
    done
fi
[ "$#" -gt 0 ] || exit 0
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
apt-get clean
rm -rf /var/lib/apt/lists/*
