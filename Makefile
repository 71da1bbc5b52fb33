# Two entry points; the work lives in scripts/ so CI and people run the same thing.
.PHONY: demo test bench bench-proxy bench-deploy

demo:
	@scripts/demo

test:
	@scripts/test

# Figures for the issues' targets (release build; needs the lab at 10 nodes).
bench:
	@scripts/bench

# Prism's proxy against nginx on loopback (installs nginx and wrk).
bench-proxy:
	@scripts/bench proxy

# 10 000+ requests through a redeploy by prism daemon on the lab.
bench-deploy:
	@scripts/bench deploy
