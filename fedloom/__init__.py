"""The `fedloom` command: node, researcher, certs, data, new and demo sub-commands."""
