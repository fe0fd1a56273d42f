"""The container: config, plugin loading, the HTTP app and its wires, the CLI."""
