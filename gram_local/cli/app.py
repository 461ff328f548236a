"""The `gram-local` command group; each subcommand lives in the module named after its concept."""

from __future__ import annotations

import click

from gram_local import __version__
from gram_local.cli.batch import batch_command
from gram_local.cli.bench import bench_command
from gram_local.cli.doctor import doctor
from gram_local.cli.evals import eval_group
from gram_local.cli.judge import best_of_n, compare, prompt, rank, vote
from gram_local.cli.models import models_group
from gram_local.cli.serve import mcp_command, serve_command
from gram_local.convert.__main__ import convert_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gram-local")
def main() -> None:
    """A local, offline judge running the GRAM-RR reward-reasoning models on llama.cpp.

    Options go after the subcommand's name, and each can also come from a GRAM_LOCAL_<NAME>
    environment variable (GRAM_LOCAL_MODEL, GRAM_LOCAL_MAX_THINK_TOKENS, ...).
    """


for command in (compare, vote, rank, best_of_n, prompt, doctor, batch_command, eval_group, bench_command, models_group,
                convert_command, serve_command, mcp_command):
    main.add_command(command)
