#!/bin/sh
# apt-get install PACKAGE... without starting any service the packages ship.
#
# The test peers (Postfix, Dovecot) run as private instances in temp directories; a
# system-wide daemon started by a postinst would only hold ports, and in a container
# without an init system its start can fail the whole install. Debian's postinsts start
# daemons through invoke-rc.d or deb-systemd-invoke, and both ask /usr/sbin/policy-rc.d
# first: exit 101 means "forbidden" (what Docker's Debian images ship). Any
# policy-rc.d already there is put back afterwards, whatever happens. Run as root.
set -eu

policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ] || [ -L "$policy" ]; then
    saved="$(mktemp "$policy.petrel-saved.XXXXXX")"
    mv -f "$policy" "$saved"
fi

restore() {
    rm -f "$policy"
    if [ -n "$saved" ]; then
        mv -f "$saved" "$policy"
    fi
}
trap restore EXIT
trap 'exit 130' INT TERM HUP

printf '#!/bin/sh\n# tools/apt-install-no-start.sh: no service starts during this install\nexit 101\n' >"$policy"
chmod 0755 "$policy"

DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
