"""What runs around every message: metrics, the audit trail and the control channel."""
