"""One module per `regmix-ds` subcommand: argument parsing only, the work is in the stage modules."""
