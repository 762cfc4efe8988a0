"""Operating it: keys, logs, metrics, shutdown, the console, replicas, the CLI, deployment files,
benchmarks."""
