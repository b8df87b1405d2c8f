"""Example Django project whose audit trail goes into an immutable_logging chain."""
