"""Sandbox for algorithm marketplaces."""
