"""The JSON Schemas of the `check`, `fix` and `stats` JSON reports, shipped in the package
(``convlint schema check|fix|stats`` prints them)."""
