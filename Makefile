# Two commands on a fresh machine:
#   make serve   install what is needed, then serve the default model on 127.0.0.1:8000
#   make test    install what is needed, then run the whole test suite
.PHONY: serve test setup setup-test

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test

serve: setup
	.venv/bin/memoir serve

test: setup-test
	.venv/bin/python -m pytest -q
