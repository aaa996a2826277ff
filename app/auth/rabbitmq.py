"""The endpoints RabbitMQ's HTTP auth backend calls (``rabbitmq_auth_backend_http``).

Configure the broker with ``config/rabbitmq/rabbitmq.conf``; it POSTs form fields and
expects ``allow`` or ``deny`` in a 200 response.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request

from app.api.openapi import documented

bp = Blueprint("rabbitmq_auth", __name__, url_prefix="/auth/rabbitmq")
logger = logging.getLogger(__name__)


def _answer(decision: str) -> Response:
    return Response(decision, mimetype="text/plain")


def _field(name: str) -> str:
    return request.values.get(name, "")


def _access():
    return current_app.extensions["postroom"].broker_access


_FORM = "form fields as RabbitMQ's HTTP auth backend sends them; answers text 'allow' or 'deny'"


@bp.route("/user", methods=["GET", "POST"])
@documented("RabbitMQ asks: may this user log in (password = a Postroom token)?", responses={200: None},
            query={"username": _FORM, "password": "a bearer token"})
def user():
    """Authenticate an AMQP login: username and a Postroom token as password."""
    decision = _access().user(_field("username"), _field("password"))
    logger.info("broker login %s: %s", _field("username"), decision)
    return _answer(decision)


@bp.route("/vhost", methods=["GET", "POST"])
@documented("RabbitMQ asks: may this user use the virtual host?", responses={200: None},
            query={"username": _FORM, "vhost": "", "ip": ""})
def vhost():
    """Authorise access to a virtual host."""
    return _answer(_access().vhost_access(_field("username"), _field("vhost")))


@bp.route("/resource", methods=["GET", "POST"])
@documented("RabbitMQ asks: may this user configure/write/read an exchange or queue?", responses={200: None},
            query={"username": _FORM, "vhost": "", "resource": "exchange or queue", "name": "",
                   "permission": "configure, write or read"})
def resource():
    """Authorise configure/write/read on an exchange or queue."""
    decision = _access().resource(
        _field("username"), _field("vhost"), _field("resource"), _field("name"), _field("permission")
    )
    if decision != "allow":
        logger.info("broker refused %s %s %s %s", _field("username"), _field("permission"),
                    _field("resource"), _field("name"))
    return _answer(decision)


@bp.route("/topic", methods=["GET", "POST"])
@documented("RabbitMQ asks: may this user publish to a topic exchange with this routing key?",
            responses={200: None},
            query={"username": _FORM, "vhost": "", "name": "the exchange", "permission": "", "routing_key": ""})
def topic():
    """Authorise a publish to a topic exchange with a routing key."""
    return _answer(_access().topic(
        _field("username"), _field("vhost"), _field("name"), _field("permission"), _field("routing_key")
    ))
