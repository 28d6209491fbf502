#!/bin/bash
# Build a test kernel from a Debian linux-source tarball: virtme-ng's minimal
# VM config with the given config fragments merged over it, in order. The
# tree is cached in CACHE and rebuilt only when a fragment, the tarball or
# virtme-ng change. Prints the kernel build directory on its last line.
#   tests/vm/build-kernel.sh [--install] CACHE TARBALL FRAGMENT...
# --install also puts the kernel where kproxy's build and tests look for a
# kernel, as a distribution would install it but out of the bootloader's
# sight: its modules and a `build` link to the tree in /lib/modules/<release>/,
# and the image beside them as vmlinuz (the kernel-install layout, which
# Debian's grub does not scan).
set -euo pipefail
install=0
if [ "${1:-}" = --install ]; then install=1; shift; fi
cache=$1 tarball=$2
shift 2
fragments=()
for f in "$@"; do fragments+=("$(realpath "$f")"); done
root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$root/.venv/bin:$PATH
src=$cache/$(basename "$tarball" .tar.xz)
image=$src/arch/x86/boot/bzImage

install_kernel() {
	local release
	release=$(make -s -C "$src" kernelrelease)
	if cmp -s "$image" "/lib/modules/$release/vmlinuz"; then
		return
	fi
	echo "kernel: installing $release into /lib/modules/$release" >&2
	make -C "$src" -s modules_install >>"$cache/build.log" 2>&1
	ln -sfn "$src" "/lib/modules/$release/build"
	cp "$image" "/lib/modules/$release/vmlinuz"
}

key=$( { cat "${fragments[@]}"; stat -c '%s %Y' "$tarball"; vng --version; } | sha256sum | cut -c1-16)
if [ -e "$image" ] && [ "$(cat "$cache/key" 2>/dev/null)" = "$key" ]; then
	echo "kernel: $src cached ($key)" >&2
	if [ $install = 1 ]; then install_kernel; fi
	echo "$src"
	exit 0
fi

mkdir -p "$cache"
rm -f "$cache/key"
if [ ! -e "$src/Makefile" ]; then
	echo "kernel: extracting $tarball" >&2
	tar -xJf "$tarball" -C "$cache"
fi
cd "$src"
# vng writes its minimal VM config; ours is merged over it afterwards, since
# vng appends its own settings (debug info among them) after any --config.
vng --kconfig >"$cache/kconfig.log" 2>&1
scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >>"$cache/kconfig.log" 2>&1
make olddefconfig >>"$cache/kconfig.log" 2>&1
# Kconfig drops what it cannot satisfy without a word: check every line.
missing=0
while read -r line; do
	name=${line%%=*} value=${line#*=}
	if [ "$value" = n ]; then
		grep -qE "^$name=" .config && { echo "kernel: $line not applied" >&2; missing=1; }
	else
		grep -qxF "$line" .config || { echo "kernel: $line not applied" >&2; missing=1; }
	fi
done < <(cat "${fragments[@]}" | grep -E '^CONFIG_')
[ $missing = 0 ]

echo "kernel: building in $src (make -j$(nproc))" >&2
start=$SECONDS
make -j"$(nproc)" >"$cache/build.log" 2>&1 || { tail -30 "$cache/build.log" >&2; exit 1; }
echo "kernel: built in $((SECONDS - start)) s" >&2
echo "$key" > "$cache/key"
if [ $install = 1 ]; then install_kernel; fi
echo "$src"
