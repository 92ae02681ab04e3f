"""The admin REST API (bearer token)."""
