"""``python -m lightning_entropy.cli [overrides...]``: the same as the ``lightning-entropy`` console script."""

from lightning_entropy.cli import main

if __name__ == "__main__":
    main()
