"""Alerts: records, delivery and sinks (see pushauth/detection/rules.py for what raises them)."""
