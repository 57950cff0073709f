"""The RegMix loop around the models: sampling the swarm, training proxies (locally or as a Slurm
array), collecting their results, verifying the chosen mixture. Imports `core`, `data`, `train`
and `regress`."""
