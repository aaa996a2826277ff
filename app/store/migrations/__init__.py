"""Numbered schema migrations, applied in order by ``postroom db upgrade``."""
