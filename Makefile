# inferlane build, test, lab and benchmark entry points. Run as root: the lab and
# the privileged tests create network namespaces and load eBPF programs.

# Debian packages the build, the lab and the tests need. nfdump (nfcapd) and tshark
# decode the flow export in tests/export_decode.rs; systemd: systemd-analyze (unit
# checks); dpkg-dev: dpkg-shlibdeps (the package's Depends); init-system-helpers:
# deb-systemd-helper (the package's maintainer scripts); prometheus: promtool and
# python3-prometheus-client: the metrics format checks; dbus-daemon: a private bus for the
# D-Bus client's test (src/systemd.rs).
APT_PACKAGES := clang llvm libbpf-dev bpftool linux-libc-dev iproute2 nftables iperf3 tcpdump openssl curl \
	nfdump tshark systemd dpkg-dev init-system-helpers prometheus python3-prometheus-client dbus-daemon

# cargo-deb builds the Debian package; pinned to a version that builds with Rust 1.95.
CARGO_DEB_VERSION := 3.8.0

CARGO ?= cargo
# bash: the test recipe reads PIPESTATUS.
SHELL := /bin/bash

.PHONY: deps build release deb cargo-deb lab test test-unit check-root check-clean bench bench-deps soak fuzz clean

## deps: install the Debian packages that are missing (apt-get update only if needed)
deps: check-root
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all Debian packages present"; fi

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

## cargo-deb: install cargo-deb (pinned) unless that version is already there
cargo-deb:
	@cargo-deb --version 2>/dev/null | grep -q " $(CARGO_DEB_VERSION)$$" || \
		$(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked

## deb: the Debian package from a release build, in target/debian/
deb: deps cargo-deb
	$(CARGO) deb --locked
	@ls -1 target/debian/*.deb

## lab: build, then build the namespace lab, run the daemon in it, drive traffic, report, tear down
lab: build
	./target/debug/inferlane lab

## test: every test, privileged ones included; a privileged test that cannot run fails
test: deps cargo-deb
	@mkdir -p target
	$(CARGO) build --all-targets
	INFERLANE_REQUIRE_PRIVILEGED=1 $(CARGO) test --lib --bins --tests 2>&1 | tee target/test.log; \
	status=$${PIPESTATUS[0]}; \
	if grep -q "SKIPPED (needs root)" target/test.log; then echo "error: privileged tests were skipped"; exit 1; fi; \
	exit $$status
	@$(MAKE) --no-print-directory check-clean
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

## test-unit: the tests that need no root (config, parsers, encoders)
test-unit:
	$(CARGO) test --lib --test config_check
	$(CARGO) test --test packaging -- unit_ config_writable

check-root:
	@[ "$$(id -u)" = 0 ] || { echo "error: run as root (apt-get, network namespaces, eBPF)"; exit 1; }

## check-clean: fail if tests left namespaces (il*), inferlane pins (on any bpffs mount),
## handover state files, programs, routing rules, qdiscs or the package behind
check-clean:
	@left=""; \
	ns=$$(ip netns list 2>/dev/null | awk '$$1 ~ /^il[0-9]+[a-z]+-/ {print $$1}'); [ -z "$$ns" ] || left="$$left namespaces: $$ns;"; \
	[ ! -e /sys/fs/bpf/inferlane ] || left="$$left pins under /sys/fs/bpf/inferlane;"; \
	for m in $$(awk '$$3 == "bpf" {print $$2}' /proc/mounts | sort -u); do \
		[ "$$m" = /sys/fs/bpf ] || [ ! -e "$$m/inferlane" ] || left="$$left pins under $$m/inferlane;"; \
	done; \
	hf=$$(ls -1 /run/inferlane/*.handover /tmp/inferlane-*/*.handover 2>/dev/null | tr '\n' ' '); \
	[ -z "$$hf" ] || left="$$left handover state files: $$hf;"; \
	! dpkg-query -W -f='$${db:Status-Abbrev}' inferlane 2>/dev/null | grep -q '^[a-z]' || left="$$left the inferlane package (dpkg -P inferlane);"; \
	progs=$$(bpftool prog show 2>/dev/null | grep -cE ' name (lan_ingress|lan_ingress_tc|lan_egress|wan_egress) ' || true); \
	[ "$$progs" = 0 ] || left="$$left $$progs inferlane programs still loaded;"; \
	! { ip rule; ip -6 rule; } 2>/dev/null | grep -q 'proto 173' || left="$$left inferlane routing rules (proto 173);"; \
	! tc qdisc show 2>/dev/null | grep -q ' 1a1: ' || left="$$left inferlane qdiscs (1a1:);"; \
	if [ -n "$$left" ]; then echo "error: left behind:$$left"; exit 1; fi; echo "nothing left behind"

# Debian packages only the benchmarks need (trafgen, for the forwarding and export
# benchmarks; softflowd, the export benchmark's comparison).
BENCH_APT_PACKAGES := netsniff-ng softflowd

bench-deps: deps
	@missing=""; for p in $(BENCH_APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

## bench: benchmarks, figures written to BENCHMARKS.md (installs BENCH_APT_PACKAGES first);
## the soak (about 6 minutes) is separate: make soak
bench: bench-deps
	$(CARGO) build --release --bin inferlane
	$(CARGO) run --release --example bench_datapath -- --write BENCHMARKS.md
	$(CARGO) run --release --example bench_userspace -- --write BENCHMARKS.md
	$(CARGO) run --release --example bench_forwarding -- --write BENCHMARKS.md
	$(CARGO) run --release --example bench_queues -- --write BENCHMARKS.md
	$(CARGO) run --release --example bench_export -- --write BENCHMARKS.md

## soak: 1,000,000 flows created and expired through the lab (10 cycles of 100k), IPv4
## then IPv6; the daemon's resident memory and the flow table's fill, written to BENCHMARKS.md
soak: bench-deps
	$(CARGO) build --release --bin inferlane
	$(CARGO) run --release --example soak -- --write BENCHMARKS.md
	$(CARGO) run --release --example soak -- --ipv6 --write BENCHMARKS.md

## fuzz: cargo-fuzz on the punt parsers (DNS, TLS, QUIC, frames), FUZZ_SECONDS each
## (default 60). Stable Rust: no sanitizer, libFuzzer's coverage guidance only.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := dns tls quic frame
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		seeds=""; [ -d fuzz/seeds/$$t ] && seeds="fuzz/seeds/$$t"; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		$(CARGO) fuzz run --sanitizer none $$t fuzz/corpus/$$t $$seeds -- -max_total_time=$(FUZZ_SECONDS) \
			> fuzz/$$t.log 2>&1 || { tail -30 fuzz/$$t.log; echo "fuzz $$t FAILED (log: fuzz/$$t.log)"; exit 1; }; \
		tail -1 fuzz/$$t.log; \
	done

clean:
	$(CARGO) clean
