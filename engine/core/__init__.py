"""The hot path and what feeds it: hooks, timers, clocks and the sampler, recording, work (FLOPs / bytes)."""
