from aligntune.cli import console

raise SystemExit(console())
