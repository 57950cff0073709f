"""regmix-ds: choose an LLM pre-training data mixture by regression over a swarm of proxy runs."""

__version__ = "0.1.0"
