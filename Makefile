# Two entry points; the work lives in scripts/ so CI and people run the same thing.
.PHONY: demo test bench bench-proxy bench-reconcile bench-failover bench-footprint docs bench-deploy bench-volumes bench-mesh

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

# A database on a durable volume: kill → healthy elsewhere with every
# acknowledged write (p50, max over 10 kills), and a spot notice's downtime
# and lost writes; on the lab with 2+ nodes of its own in one zone.
bench-volumes:
	@cargo bench --profile dev --bench volumes

# The mesh: container → container across nodes over WireGuard against a
# published port (latency, throughput), names after a move (p50, max), the
# operator's idle CPU with the mesh on and off at 10 nodes; on the lab
# with nodes of its own.
bench-mesh:
	@cargo bench --profile dev --bench mesh

# The daemon's RSS and idle CPU at 10 nodes and 100 containers after
# 10 minutes (FOOTPRINT_MINUTES), its binary size, and nodes free of Prism.
bench-footprint:
	@scripts/bench footprint

# Shell completions and man pages, generated from the command line's own
# definitions, into target/docs/ (for packaging; `prism completions` and
# `prism man` print them too).
docs:
	cargo build --locked --release
	mkdir -p target/docs/man target/docs/completions
	target/release/prism man --dir target/docs/man
	target/release/prism completions bash > target/docs/completions/prism.bash
	target/release/prism completions zsh > target/docs/completions/_prism
	target/release/prism completions fish > target/docs/completions/prism.fish

# 10 000+ requests through a redeploy by prism daemon on the lab, then through
# a spot notice and preemption 30 s later on 3 nodes of its own (added, then
# preempted); zero failed requests is the target.
bench-deploy:
	@scripts/bench deploy
