"""Train one model on a data mixture with DeepSpeed: `python|deepspeed|mpirun|srun train.py --help`."""
import sys

from regmix_ds import engine
from regmix_ds.trainer import main

if __name__ == "__main__":
    engine.shutdown(main(sys.argv[1:]))
