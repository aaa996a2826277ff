"""Create per-user send counters for rate limiting (a frozen copy)."""

from peewee import BigIntegerField, CharField, CompositeKey, IntegerField, Model


def up(migrator, db):
    class RateCounter(Model):
        username = CharField(max_length=32)
        window = BigIntegerField()
        count = IntegerField(default=0)

        class Meta:
            database = db
            legacy_table_names = False
            primary_key = CompositeKey("username", "window")

    db.create_tables([RateCounter])
