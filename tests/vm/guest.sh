#!/bin/sh
# Runs inside the VM as root, from the read-only checkout:
#   tests/vm/guest.sh <module.ko> <writable results dir> [pytest paths...]
# Loads the module, runs the kernel tests, unloads it and leaves the kernel
# log in <results>/dmesg.txt for the host to scan. Each step's exit status
# goes to <results>/status, so the host can tell a failed boot (no file)
# from a failed step. On a kernel with kmemleak (make test-debug) a scan
# after the unload goes to <results>/kmemleak.txt.
ko=$1 out=$2
shift 2
[ $# -gt 0 ] || set -- tests/kernel

# Boot messages are not ours to judge: keep them apart, then start clean.
dmesg > "$out/dmesg-boot.txt"
dmesg -C

kmemleak=/sys/kernel/debug/kmemleak
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
if [ -e $kmemleak ]; then
	# Leaks suspected before the module is loaded are the boot's, not ours.
	echo clear > $kmemleak
	# The scans after the unload below are the ones that count; the
	# automatic scan every 10 minutes would only take the one vCPU from
	# the tests for minutes at a time.
	echo scan=off > $kmemleak
	export KPROXY_TEST_DEBUG_KERNEL=1
fi

# `make test-long`: the tests take their full sizes (see tests/kernel/util.py)
[ -e "$out/long" ] && export KPROXY_TEST_LONG=1

insmod "$ko"
echo "insmod=$?" > "$out/status"

KPROXY_KO=$ko PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest \
	-p no:cacheprovider -v --timeout=600 --durations=15 --junitxml="$out/junit.xml" "$@"
echo "pytest=$?" >> "$out/status"

rmmod kproxy
echo "rmmod=$?" >> "$out/status"

if [ -e $kmemleak ]; then
	# An object is reported only once it has been unreferenced for a while
	# and seen so by two scans.
	sleep 6
	echo scan > $kmemleak
	sleep 6
	echo scan > $kmemleak
	cat $kmemleak > "$out/kmemleak.txt"
fi

dmesg > "$out/dmesg.txt"
