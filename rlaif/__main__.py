from rlaif.cli import cli

cli()
