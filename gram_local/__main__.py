"""`python -m gram_local`: the same as the `gram-local` command."""

from gram_local.cli import main

main(prog_name="gram-local")
