"""The command line: argv, the Hydra entry, sweeps, launchers and the command handlers.

Nothing here imports torch at import time.
"""
