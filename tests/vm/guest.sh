#!/bin/sh
# Runs inside the VM as root, from the read-only checkout:
#   tests/vm/guest.sh <module.ko> <writable results dir> [pytest paths...]
# Loads the module, runs the kernel tests, unloads it and leaves the kernel
# log in <results>/dmesg.txt for the host to scan. Each step's exit status
# goes to <results>/status, so the host can tell a failed boot (no file)
# from a failed step.
ko=$1 out=$2
shift 2
[ $# -gt 0 ] || set -- tests/kernel

# Boot messages are not ours to judge: keep them apart, then start clean.
dmesg > "$out/dmesg-boot.txt"
dmesg -C

# `make test-long`: the tests take their full sizes (see tests/kernel/util.py)
[ -e "$out/long" ] && export KPROXY_TEST_LONG=1

insmod "$ko"
echo "insmod=$?" > "$out/status"

KPROXY_KO=$ko PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest \
	-p no:cacheprovider -v --timeout=600 --durations=15 --junitxml="$out/junit.xml" "$@"
echo "pytest=$?" >> "$out/status"

rmmod kproxy
echo "rmmod=$?" >> "$out/status"

dmesg > "$out/dmesg.txt"
