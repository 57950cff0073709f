"""`python -m regmix_ds COMMAND ...` is `regmix-ds COMMAND ...`.

The launchers use it: `deepspeed --module regmix_ds train`.
"""
import sys

from regmix_ds.commands.main import main

sys.exit(main())
