"""`python -m prvr ...` (what `torchrun -m prvr ...` runs): the `prvr` command."""

from prvr.cli import main

if __name__ == "__main__":
    main()
