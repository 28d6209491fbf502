# kproxy: every entry point. `make help` lists them.
SHELL := /bin/bash
# pipefail: a build piped through tee must still fail when the build fails.
.SHELLFLAGS := -o pipefail -ec

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Kernels with headers installed; KVER=<kver> picks one.
KVERS := $(if $(KVER),$(KVER),$(sort $(patsubst /lib/modules/%/build,%,$(wildcard /lib/modules/*/build))))
VENV := .venv
PY := $(VENV)/bin/python
# Extra options for tests/vm/run.py, e.g. VM_OPTS='--memory 2G --accel tcg'.
VM_OPTS ?=
# A subset of the kernel tests, e.g. TESTS=tests/kernel/test_module.py
TESTS ?=
RUN_TESTS := $(if $(TESTS),--tests $(TESTS))

# The newest kernel kproxy is tested on: Debian unstable's source package,
# built by tests/vm/build-kernel.sh (virtme-ng's minimal config plus
# tests/vm/kproxy.config and newest.config) into NEWEST_CACHE, once, and
# installed as /lib/modules/<release>/{build,vmlinuz}, where `make` and the
# VM harness find every kernel. Only this package comes from unstable: the
# pin in tests/vm/apt/ keeps everything else on bookworm. flex ... cpio
# in DEB_PKGS below build it (and the debug kernel). Defined first: DEB_PKGS
# is expanded where it is defined (:=).
NEWEST_SOURCE := linux-source-7.2
NEWEST_CACHE ?= $(HOME)/.cache/kproxy/newest-kernel

# Installed without their Recommends (which brought in 309 packages, speech
# recognition and a Ceph client among them), so what the project uses that a
# package only recommends, or that a minimal system lacks, is named here:
# ca-certificates (pip and curl over HTTPS; python3 and libcurl4 only
# recommend it), man-db (`man -w kpctl` in the install test) and procps
# (sysctl in the bench VM). wrk is the HTTP bench's load generator (keep-alive
# requests/s and latency percentiles). nginx is a backend of the TLS tests and, with its
# stream module, a TLS-terminating peer in the bench: both start their own
# instances, never the system service. dkms only recommends the headers, listed here, and
# builds with build-essential; what qemu, the kernels and clang recommend
# (qemu-utils, ovmf, apparmor, firmware, llvm-14-dev) is not used.
DEB_PKGS := linux-image-amd64 linux-headers-amd64 linux-image-6.12-amd64 \
	linux-headers-6.12-amd64 qemu-system-x86 clang llvm libbpf-dev \
	bpftool iproute2 dkms build-essential kmod busybox-static \
	linux-source-6.12 socat python3-venv curl ca-certificates man-db procps \
	iperf3 sockperf haproxy nginx libnginx-mod-stream python3-matplotlib wrk \
	$(NEWEST_SOURCE) flex bison bc libelf-dev libssl-dev cpio

APT_SID := /etc/apt/sources.list.d/kproxy-sid.sources /etc/apt/preferences.d/kproxy-sid.pref

.PHONY: all help deps sparse checkpatch gen bpf docs wheel install uninstall run test test-long test-host test-kernel test-debug bench clean

all: $(foreach k,$(KVERS),build/$(k)/kproxy.ko) bpf

help:
	@echo 'make [all]      build build/<kver>/kproxy.ko for every kernel (KVER=<kver>: one)'
	@echo 'make deps       install Debian packages and the .venv (no-op when present)'
	@echo 'make run        load the module and start kpctl (in a VM if this kernel cannot)'
	@echo 'make test       host tests, then (after make install) the kernel tests in a VM per kernel, then make uninstall'
	@echo 'make test-kernel  only the kernel tests (TESTS=<paths>: a subset, e.g. one file)'
	@echo 'make test-long  the kernel tests at full sizes (slow under emulation)'
	@echo 'make test-debug the kernel tests on a 6.12 debug kernel (KASAN, lockdep, kmemleak)'
	@echo 'make bench      kproxy against direct, socat, HAProxy and sockmap (BENCH_QUICK=1: a smoke run)'
	@echo 'make sparse     checkpatch, then sparse (C=2) on every kernel, failing on any warning (make test runs it)'
	@echo 'make checkpatch the kernel'"'"'s checkpatch.pl --strict on kmod/'
	@echo 'make gen        regenerate kmod/ tables from schema/kproxy.yaml'
	@echo 'make wheel      build the kpctl wheel (BPF programs, man page, completion inside) into build/dist'
	@echo 'make install    DKMS install for every kernel + kpctl in /opt/kproxy (again: an upgrade)'
	@echo 'make uninstall  undo make install'

# --- dependencies -----------------------------------------------------------
# Only touches apt when dpkg-query reports a package missing, so a warm
# `make deps` costs a fraction of a second.
deps: $(VENV)/.stamp $(APT_SID)
	$(call apt_ensure,$(DEB_PKGS))
	tests/vm/build-kernel.sh --install $(NEWEST_CACHE) /usr/src/$(NEWEST_SOURCE).tar.xz \
		tests/vm/kproxy.config tests/vm/newest.config >/dev/null

# A changed source list must be read before apt_ensure looks at packages.
/etc/apt/sources.list.d/kproxy-sid.sources: tests/vm/apt/kproxy-sid.sources
	install -m 644 $< $@
	apt-get update
/etc/apt/preferences.d/kproxy-sid.pref: tests/vm/apt/kproxy-sid.pref
	install -m 644 $< $@

# Installs those of the packages $(1) that dpkg-query does not report
# installed. dpkg-query fails on a name it has never seen; under pipefail
# that status would hide exactly the missing packages, so only its text is
# read.
define apt_ensure
	@status=$$(dpkg-query -W -f='$${db:Status-Abbrev}\n' $(1) 2>&1 || true); \
	if grep -qv '^ii' <<<"$$status"; then \
		echo "deps: installing Debian packages"; \
		apt-get update; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(1); \
	fi
endef

# The venv is rebuilt only when pyproject.toml changes (or it is missing).
$(VENV)/.stamp: pyproject.toml
	$(call apt_ensure,python3-venv)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# --- build ------------------------------------------------------------------
# Each kernel gets its own copy of kmod/ so the two builds never share objects.
# W=1e is W=1 plus -Werror on both 6.1 and 6.12; modpost warnings (not covered
# by -Werror) are caught by grepping the log.
build/%/kproxy.ko: FORCE
	@mkdir -p build/$*
	@cp -a kmod/. build/$*/
	$(MAKE) -C /lib/modules/$*/build M=$(CURDIR)/build/$* W=1e modules 2>&1 | tee build/$*/build.log
	@! grep -E '[Ww]arning|WARNING' build/$*/build.log

# sparse itself: 7.2's headers need __typeof_unqual__, which bookworm's
# sparse 0.6.4 cannot parse (the kernel then skips the check), and unstable's
# binary needs unstable's libc. So unstable's source package (tests/vm/apt/
# adds its deb-src) is built here against bookworm: a few seconds. It checks
# 6.1 and 6.12 as cleanly.
SPARSE_DIR := build/sparse
SPARSE := $(SPARSE_DIR)/sparse
$(SPARSE): | $(APT_SID)
	rm -rf $(SPARSE_DIR) && mkdir -p $(SPARSE_DIR)/src
	cd $(SPARSE_DIR) && apt-get -o APT::Sandbox::User=root source --download-only sparse/sid
	tar -xf $(SPARSE_DIR)/sparse_*.orig.tar.* -C $(SPARSE_DIR)/src --strip-components=1
	$(MAKE) -C $(SPARSE_DIR)/src -j$$(nproc) sparse >$(SPARSE_DIR)/build.log 2>&1
	cp $(SPARSE_DIR)/src/sparse $@

# C=2 runs sparse on every source file, built or not (C=1 would skip up-to-date
# ones). A kernel whose Makefile finds the checker unfit skips it with a
# message and no warning, so every source file must show a CHECK line.
sparse: checkpatch $(SPARSE)
	@for k in $(KVERS); do \
		mkdir -p build/$$k; cp -a kmod/. build/$$k/; \
		echo "sparse: $$k"; \
		$(MAKE) -C /lib/modules/$$k/build M=$(CURDIR)/build/$$k C=2 CHECK=$(CURDIR)/$(SPARSE) W=1e modules 2>&1 | tee build/$$k/sparse.log; \
		if grep -E '[Ww]arning|[Ee]rror:' build/$$k/sparse.log; then exit 1; fi; \
		for c in kmod/*.c; do \
			grep -qE "^  CHECK .*\b$$(basename $$c)$$" build/$$k/sparse.log || \
				{ echo "sparse: $$k did not check $$c"; exit 1; }; \
		done; \
	done

# checkpatch.pl and the files it reads, from Debian's linux-source-6.12.
CHECKPATCH_DIR := build/checkpatch/linux-source-6.12
$(CHECKPATCH_DIR)/.stamp:
	rm -rf build/checkpatch && mkdir -p build/checkpatch
	tar -xJf /usr/src/linux-source-6.12.tar.xz -C build/checkpatch \
		linux-source-6.12/scripts/checkpatch.pl linux-source-6.12/scripts/spelling.txt \
		linux-source-6.12/scripts/const_structs.checkpatch
	touch $@

# Every report fails, CHECKs included; generated files are held to it too.
checkpatch: $(CHECKPATCH_DIR)/.stamp
	perl $(CHECKPATCH_DIR)/scripts/checkpatch.pl --strict --no-tree --quiet \
		-f kmod/*.c kmod/*.h kmod/uapi/*.h

gen:
	python3 schema/gen.py

# The BPF programs shipped in the tree (kmod/bpf/*.bpf.c -> build/bpf/*.o).
bpf:
	$(MAKE) -C kmod/bpf OUT=$(CURDIR)/build/bpf

# Man page and bash completion, both generated from kpctl's command table.
docs: deps
	@mkdir -p build
	$(PY) -m kpctl.shell.manpage > build/kpctl.1
	$(PY) -m kpctl.shell.bashcomp > build/kpctl.bash

# The kernel's own YNL client and schemas, from Debian's linux-source-6.12,
# for the kernel test that drives the module with our spec. Extracted here
# once: decompressing the tarball inside an emulated VM takes minutes.
YNL_DIR := build/ynl/linux-source-6.12
# (No prerequisite on the tarball: on a fresh machine it exists only once
# `make deps` has run, after make has read this file.)
$(YNL_DIR)/.stamp:
	rm -rf build/ynl && mkdir -p build/ynl
	tar -xJf /usr/src/linux-source-6.12.tar.xz -C build/ynl --wildcards 'linux-source-6.12/tools/net/ynl/*' \
		'linux-source-6.12/Documentation/netlink/*'
	touch $@

FORCE:

# --- install ----------------------------------------------------------------
DKMS_SRC := /usr/src/kproxy-$(VERSION)
KPCTL_PREFIX := /opt/kproxy
WHEEL_DIR := build/dist
WHEEL := $(WHEEL_DIR)/kpctl-$(VERSION)-py3-none-any.whl
MAN_PAGE := /usr/local/share/man/man1/kpctl.1
COMPLETION := /usr/local/share/bash-completion/completions/kpctl
# uninstall cleans every kernel DKMS may have built for, whatever KVER says.
ALL_KVERS := $(sort $(patsubst /lib/modules/%/build,%,$(wildcard /lib/modules/*/build)))
# Every version of kproxy DKMS knows (a checkout of another version may have
# installed it), from lines like "kproxy/0.1.0, 6.1.0-57-amd64, x86_64: installed".
DKMS_VERSIONS = $$(dkms status -m kproxy 2>/dev/null | sed -n 's|^kproxy/\([^,:]*\)[,:].*|\1|p' | sort -u)

# The wheel as `pip wheel .` builds it; setup.py puts the BPF programs, the
# man page and the completion in it. setuptools reuses build/lib: emptied
# first, so that a module removed from kpctl/ does not ship.
wheel: deps
	rm -rf build/lib $(WHEEL_DIR)
	$(PY) -m pip wheel -q --no-deps -w $(WHEEL_DIR) .

# Also an upgrade: every registered version is removed before this one is
# added, and kpctl's venv is made anew from the wheel.
install: wheel
	for v in $(DKMS_VERSIONS); do dkms remove -m kproxy -v $$v --all; done
	rm -rf /usr/src/kproxy-*
	mkdir -p $(DKMS_SRC)
	cp -a kmod/. $(DKMS_SRC)/
	sed 's/@VERSION@/$(VERSION)/' kmod/dkms.conf > $(DKMS_SRC)/dkms.conf
	dkms add -m kproxy -v $(VERSION)
	for k in $(KVERS); do \
		dkms install -m kproxy -v $(VERSION) -k $$k; \
		depmod -a $$k; \
	done
	# Debian's system Python is externally managed (PEP 668): kpctl gets its own venv.
	python3 -m venv --clear $(KPCTL_PREFIX)
	$(KPCTL_PREFIX)/bin/pip install -q $(WHEEL)
	ln -sfn $(KPCTL_PREFIX)/bin/kpctl /usr/local/bin/kpctl
	# Where man (MANDATORY_MANPATH) and bash-completion look, from the wheel's data files.
	install -D -m 644 $(KPCTL_PREFIX)/share/man/man1/kpctl.1 $(MAN_PAGE)
	install -D -m 644 $(KPCTL_PREFIX)/share/bash-completion/completions/kpctl $(COMPLETION)

uninstall:
	for v in $(DKMS_VERSIONS); do dkms remove -m kproxy -v $$v --all; done
	rm -rf /usr/src/kproxy-* $(KPCTL_PREFIX) /usr/local/bin/kpctl $(MAN_PAGE) $(COMPLETION)
	for k in $(ALL_KVERS); do depmod -a $$k; done

# --- run and test -----------------------------------------------------------
# The kernels to build for are found when make reads this file; on a fresh
# machine they are installed by `deps`, so the build is a second make.
KVER_OPT := $(if $(KVER),--kver $(KVER))
# tests/kernel/test_install.py uses the installed product: when it runs (all
# tests, or TESTS names it), run.py does `make install` on the host before
# the VMs boot and `make uninstall` after, checking that nothing is left.
# (It then uninstalls an install made before `make test` too.)
INSTALL_OPT := $(if $(TESTS),$(if $(findstring test_install,$(TESTS)),--install),--install)

run: deps
	@$(MAKE) --no-print-directory all
	$(PY) tests/vm/run.py run $(KVER_OPT) $(VM_OPTS)

test: deps
	@$(MAKE) --no-print-directory all sparse $(YNL_DIR)/.stamp
	$(PY) tests/vm/run.py test --host $(INSTALL_OPT) $(KVER_OPT) $(RUN_TESTS) $(VM_OPTS)

# The same suite at the sizes the issues name; longer than CI's budget under TCG.
test-long: deps
	@$(MAKE) --no-print-directory all $(YNL_DIR)/.stamp
	$(PY) tests/vm/run.py test --long $(INSTALL_OPT) $(KVER_OPT) $(RUN_TESTS) $(VM_OPTS)

test-host: deps
	$(PY) -m pytest tests/host

test-kernel: deps
	@$(MAKE) --no-print-directory all $(YNL_DIR)/.stamp
	$(PY) tests/vm/run.py test $(INSTALL_OPT) $(KVER_OPT) $(RUN_TESTS) $(VM_OPTS)

# The kernel suite on Debian's 6.12 built with KASAN, lockdep, kmemleak,
# atomic-sleep and list debugging (tests/vm/kproxy.config and debug.config;
# refcount_t is always checked). The kernel is built
# once into $(DEBUG_CACHE) (about 40 minutes on 2 cores) and rebuilt only
# when its config changes. One vCPU: under TCG on a busy host, lockdep and
# KASAN with two vCPUs stalled the boot (a vCPU spinning for the other).
DEBUG_CACHE ?= $(HOME)/.cache/kproxy/debug-kernel
test-debug: deps bpf $(YNL_DIR)/.stamp
	kdir=$$(tests/vm/build-kernel.sh $(DEBUG_CACHE) /usr/src/linux-source-6.12.tar.xz \
		tests/vm/kproxy.config tests/vm/debug.config | tail -1); \
	rm -rf build/debug/*.o; mkdir -p build/debug; cp -a kmod/. build/debug/; \
	$(MAKE) -C $$kdir M=$(CURDIR)/build/debug W=1e modules 2>&1 | tee build/debug/build.log; \
	if grep -E '[Ww]arning|WARNING' build/debug/build.log; then exit 1; fi; \
	$(PY) tests/vm/run.py test --debug-kernel $$kdir --memory 2G --cpus 1 --timeout 9000 $(RUN_TESTS) $(VM_OPTS)

# --- benchmarks ---------------------------------------------------------------
# `make bench`: every peer and scenario in one VM boot (bench/README.md).
# BENCH_QUICK=1 (or QUICK=1): one repetition of a subset, a smoke run.
BENCH_KVER := $(or $(KVER),$(lastword $(filter 6.12%,$(KVERS))))
BENCH_QUICK ?= $(QUICK)
bench: deps build/$(BENCH_KVER)/kproxy.ko bpf
	$(MAKE) -C bench OUT=$(CURDIR)/build/bench
	$(PY) bench/run.py --kver $(BENCH_KVER) $(if $(filter-out 0,$(BENCH_QUICK)),--quick) $(VM_OPTS)
	$(PY) bench/check_results.py

clean:
	rm -rf build
