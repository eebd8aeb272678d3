"""The `jijian` command. Subcommands import the packages they drive lazily, so `--help` stays instant."""
