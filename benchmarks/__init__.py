"""The benchmark suite (installed as fastgan.benchmarks): harness, cases, runner."""
