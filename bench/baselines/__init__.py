"""Baselines the bench runs beside Postroom, in the same run (see bench/README.md).

(a) amqp_raw: raw aio-pika confirmed publish (and a raw consume with batch acks)
(b) RabbitMQ's management HTTP publish endpoint (driven by wrk from bench/run.py)
(c) bare_app: a bare Flask view under the same gunicorn settings
(d) peewee_insert: raw Peewee insert_many into the same database
(e) naive_app: Flask + one blocking pika connection per process, waiting for each confirm
"""
