"""Training: the model, the stacked group model, the one training loop and its two trainees (one
model under DeepSpeed, K stacked proxies), and `engine`, the only module that imports DeepSpeed.
Imports `core` and `data`."""
