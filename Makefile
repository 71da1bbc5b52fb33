# Two entry points; the work lives in scripts/ so CI and people run the same thing.
.PHONY: demo test

demo:
	@scripts/demo

test:
	@scripts/test
