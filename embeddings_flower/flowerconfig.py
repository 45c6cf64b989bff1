"""Flower's settings for the project, read by ``embeddings-flower`` from this file's path.

Tornado executes this file and takes every name that is a Flower option as that option's
value: it overrides a ``FLOWER_*`` variable and is overridden by a flag. Where Flower binds
and who may log in are not set here but checked by ``embeddings_flower.guard`` on the final
options, so a different ``--conf`` cannot turn them off.
"""

# What an operator scans for each text: its state, its lane (shown in kwargs, which travel in
# the message, so every task has them even when Flower missed its task-sent event), when it
# arrived and started, how long it ran, where, how often it was retried, and why it failed.
tasks_columns = "name,uuid,state,args,kwargs,received,started,runtime,worker,retries,exception"
# With --persistent, save every minute too, so a killed Flower keeps its history.
state_save_interval = 60_000
