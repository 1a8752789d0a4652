"""The comparer service."""
