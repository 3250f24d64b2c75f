"""The graph runtime: architectures, planner, executor, backends, KV cache, sampling, generation."""
