#!/bin/bash
# Build the `make test-debug` kernel: Debian's linux-source-6.12 with
# virtme-ng's minimal VM config plus tests/vm/debug.config, cached outside
# the tree and rebuilt only when the fragment, the source package or
# virtme-ng change. Prints the kernel build directory on its last line.
#   tests/vm/debug-kernel.sh [cache dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${1:-${KPROXY_CACHE:-$HOME/.cache/kproxy}/debug-kernel}
tarball=/usr/src/linux-source-6.12.tar.xz
fragment=$root/tests/vm/debug.config
export PATH=$root/.venv/bin:$PATH
src=$cache/linux-source-6.12

key=$( { cat "$fragment"; stat -c '%s %Y' "$tarball"; vng --version; } | sha256sum | cut -c1-16)
if [ -e "$src/arch/x86/boot/bzImage" ] && [ "$(cat "$cache/key" 2>/dev/null)" = "$key" ]; then
	echo "debug kernel: cached ($key)" >&2
	echo "$src"
	exit 0
fi

mkdir -p "$cache"
rm -f "$cache/key"
if [ ! -e "$src/Makefile" ]; then
	echo "debug kernel: extracting $tarball" >&2
	tar -xJf "$tarball" -C "$cache"
fi
cd "$src"
# vng writes its minimal VM config; ours is merged over it afterwards, since
# vng appends its own settings (debug info among them) after any --config.
vng --kconfig >"$cache/kconfig.log" 2>&1
scripts/kconfig/merge_config.sh -m .config "$fragment" >>"$cache/kconfig.log" 2>&1
make olddefconfig >>"$cache/kconfig.log" 2>&1
# Kconfig drops what it cannot satisfy without a word: check every line.
missing=0
while read -r line; do
	name=${line%%=*} value=${line#*=}
	if [ "$value" = n ]; then
		grep -qE "^$name=" .config && { echo "debug kernel: $line not applied" >&2; missing=1; }
	else
		grep -qxF "$line" .config || { echo "debug kernel: $line not applied" >&2; missing=1; }
	fi
done < <(grep -E '^CONFIG_' "$fragment")
[ $missing = 0 ]

echo "debug kernel: building in $src (make -j$(nproc))" >&2
start=$SECONDS
make -j"$(nproc)" >"$cache/build.log" 2>&1 || { tail -30 "$cache/build.log" >&2; exit 1; }
echo "debug kernel: built in $((SECONDS - start)) s" >&2
echo "$key" > "$cache/key"
echo "$src"
