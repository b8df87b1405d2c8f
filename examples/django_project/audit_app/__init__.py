"""The example app: one view that writes AUDIT entries."""
