"""The durable state: the directory store, PostgreSQL, crashes and losses, the audit trail."""
