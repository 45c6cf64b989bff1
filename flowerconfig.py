"""Flower's settings, read by ``celery -A worker flower`` from the working directory.

Flower refuses to start from here without authentication: set ``FLOWER_BASIC_AUTH``
(``user:password``, comma-separated for several users) or OAuth (``FLOWER_AUTH`` with
``FLOWER_AUTH_PROVIDER``). Without it Flower's UI is open to anyone who reaches the port
and its REST API answers 401. Tornado executes this file with the environment and the
command line already applied to ``options``.
"""

from tornado.options import options

if not (options.basic_auth or options.auth):
    raise SystemExit(
        "Flower needs authentication: set FLOWER_BASIC_AUTH=user:password "
        "(or FLOWER_AUTH and FLOWER_AUTH_PROVIDER for OAuth)"
    )

# What an operator scans for each text: its state, its lane (shown in kwargs, which travel in
# the message, so every task has them even when Flower missed its task-sent event), when it
# arrived and started, how long it ran, where, how often it was retried, and why it failed.
tasks_columns = "name,uuid,state,args,kwargs,received,started,runtime,worker,retries,exception"
# With --persistent, save every minute too, so a killed Flower keeps its history.
state_save_interval = 60_000
