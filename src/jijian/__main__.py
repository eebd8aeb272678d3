"""`python -m jijian` is the `jijian` command."""

from jijian.cli.main import main

main()
