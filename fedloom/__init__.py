"""The `fedloom` command: node, researcher, certs, data, new, demo and completion sub-commands."""
