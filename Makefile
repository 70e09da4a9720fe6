# The two commands of the README. Both install the Debian packages they need when missing.
.PHONY: demo test deps

deps:
	@command -v nats-server >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server nginx >/dev/null; }

demo: deps
	cargo run --release -- demo

test: deps
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo test --locked -- --test-threads=2
