VENV ?= .venv
export VENV

.PHONY: demo test
demo:  ## the whole idea on a private two-node fleet (creates the venv; DEMO_ARGS=--help for options)
	scripts/ensure-venv.sh $(DEMO_EXTRAS)
	$(VENV)/bin/txnbackup demo $(DEMO_ARGS)

test:  ## lint, types, the test suite, then the demo as a smoke test (creates the venv, starts Redis if needed)
	scripts/test.sh
