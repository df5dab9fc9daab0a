"""`python -m sniffer` is the `sniffer` command."""

from sniffer.cli import main

main()
