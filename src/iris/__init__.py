"""Iris: a distributed job orchestrator."""
