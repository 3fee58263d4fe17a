"""Policies: the typed model and its loading."""
