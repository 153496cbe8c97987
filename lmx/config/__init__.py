"""Config defaults, field checks and whole-config validation."""
