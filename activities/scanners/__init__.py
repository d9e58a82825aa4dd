"""Adapters that turn real scanners and vulnerability APIs into SecFlow tools."""
