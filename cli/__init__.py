"""The `forsaken` command line: a thin layer of subcommands over the library (`forsaken`)."""
