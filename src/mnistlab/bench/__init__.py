"""The benchmark: `harness` (`mnistlab bench`: the lab notebook's pipeline against mnistlab, side by side),
`reference` (that pipeline, re-created) and `floor` (the floor of a training step, which only the benchmark
measures)."""
