"""Train one model on a data mixture with DeepSpeed: `python|deepspeed|mpirun|srun train.py --help`.

The same as `regmix-ds train` (`python -m regmix_ds train`), kept as the familiar entry point.
"""
import sys

from regmix_ds.commands.train import main
from regmix_ds.train import engine

if __name__ == "__main__":
    engine.shutdown(main(sys.argv[1:]))
