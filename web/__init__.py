"""The Flask dashboard over the store."""
