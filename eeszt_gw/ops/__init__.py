"""The operators' commands: status, dead letters and the audit trail, and what they share."""
