"""Distributed runs: cluster-environment glue (SLURM, submitit), launch checks, sweeps,
preemption-safe resume."""
