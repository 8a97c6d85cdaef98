"""The `fedloom` command: node, researcher, certs and demo sub-commands."""
