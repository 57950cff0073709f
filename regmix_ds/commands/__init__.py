"""`regmix-ds` and train.py: one module per command, argument parsing only; the work is in the
packages below. The top of the import graph."""
