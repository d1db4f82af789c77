VENV ?= .venv
export VENV

.PHONY: demo demo-qemu test test-quick
demo:  ## the whole idea on a private two-node fleet (creates the venv; DEMO_ARGS=--help for options)
	scripts/ensure-venv.sh $(DEMO_EXTRAS)
	$(VENV)/bin/txnbackup demo $(DEMO_ARGS)

demo-qemu:  ## the demo on a running QEMU VM: installs QEMU's tools and the guest kit when missing
	scripts/ensure-venv.sh $(DEMO_EXTRAS)
	scripts/ensure-qemu.sh
	scripts/ensure-guest.sh
	$(VENV)/bin/txnbackup demo --qemu $(DEMO_ARGS)

test:  ## lint, types, the test suite, then the demo as a smoke test (creates the venv, starts Redis if needed)
	scripts/test.sh

test-quick:  ## the edit loop: lint, types and the tests not marked slow (make test stays complete)
	SKIP_DEMO=1 SKIP_BROKER_MATRIX=1 SKIP_BENCH=1 scripts/test.sh -m "not slow"
