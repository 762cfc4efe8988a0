# Two commands on a fresh machine:
#   make serve   install what is needed, then serve the default model on 127.0.0.1:8000
#   make test    install what is needed, then run the test suite (under 15 minutes on 2 cores)
# make test-slow runs the long durability checks (kill -9 loops, default-model restarts); CI runs both.
.PHONY: serve test test-slow setup setup-test

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test

serve: setup
	.venv/bin/memoir serve

test: setup-test
	.venv/bin/python -m pytest -q -m "not slow"

test-slow: setup-test
	.venv/bin/python -m pytest -q -m slow
