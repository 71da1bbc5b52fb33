# Two entry points; the work lives in scripts/ so CI and people run the same thing.
.PHONY: demo test bench bench-proxy bench-reconcile bench-failover

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

# Reconcile on 10 lab nodes of its own with 100 containers (debug build);
# adds the nodes (fleet bench), preempts them after.
bench-reconcile:
	@scripts/bench reconcile

# Time to recover from a preemption, on the lab with nodes of its own (debug
# build: the operator waits on the network, not on its CPU).
bench-failover:
	@cargo bench --profile dev --bench failover
