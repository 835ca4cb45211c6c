"""The daemon's HTTP API and its clients.

- :mod:`~agentaskit_dr.api.server`: the aiohttp app (health, status, observations,
  metrics, authenticated control) behind the :class:`~agentaskit_dr.api.server.Controller`
  Protocol the runtime implements.
- :mod:`~agentaskit_dr.api.metrics`: the Prometheus metrics, in a registry of their own.
- :mod:`~agentaskit_dr.api.client`: a client raising one-line ``ApiError``s, and the
  status table.
- :mod:`~agentaskit_dr.api.commands`: the ``status``/``pause``/``resume``/``ack`` CLI
  commands.

Nothing is imported here, so the CLI loads aiohttp only for the commands that need it.
"""
