.PHONY: test
test:  ## lint, type-check and run the whole test suite (creates .venv, starts Redis if needed)
	scripts/test.sh
