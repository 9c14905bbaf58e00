"""Alerts: records, delivery and sinks (see pushauth/detection.py for what raises them)."""
