#!/bin/sh
# Runs bin/benchrun with the given flags after installing nginx, HAProxy
# and redis-server when they are missing and raising the open-file limit,
# which 1,000 concurrent streams through a proxy exceed at the usual 1024.
#
# On a machine running systemd, apt-get may also enable and start the
# packages' system services. The benchmark does not use them, because it
# starts its own instances on 127.0.0.1.
set -eu

bin=${BENCH_BIN:-bin}
missing=
for tool in nginx haproxy redis-server; do
	if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
		missing="$missing $tool"
	fi
done
if [ -n "$missing" ]; then
	echo "installing$missing"
	if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
	$sudo apt-get update -qq
	# shellcheck disable=SC2086 # $missing is a list of package names.
	$sudo apt-get install -y -qq $missing
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
	echo "open-file limit is $(ulimit -n); 1,000 streams need about 8192" >&2
	exit 1
fi
exec "$bin/benchrun" "$@"
