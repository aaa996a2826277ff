"""The archive: Peewee models and queries over SQLite or PostgreSQL."""
