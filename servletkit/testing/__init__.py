"""Helpers for testing servletkit and plugins against real servers."""
