"""Workflow code kept only so that runs started before a reshaping drain (see README, "Upgrading")."""
