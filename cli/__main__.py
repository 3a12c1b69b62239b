"""`python -m cli`: the Balcão command line."""

from cli.root import main

main()
