"""The streaming side of Currents: the Faust app, its settings, the local broker and the CLI."""
