"""Integrations with frameworks and servers; each module imports its framework only when used."""
