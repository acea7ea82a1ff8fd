"""The old name of ``python -m softmoe_torch.bootstrap_test`` (easy to confuse with the test
suite), kept working for one release."""

from .bootstrap_test import main, procedure, test_file  # noqa: F401 (the old module's names)
from .cli import entry

if __name__ == "__main__":
    entry(main)
