"""``embeddings-flower``: Flower for the project's workers, always behind a login.

``celery -A worker flower`` reads its settings file, ``flowerconfig.py``, from the working
directory; started anywhere else than the repo root it used to serve every task to anyone, on
every interface. The project's app now installs the login and loopback rules under that
command too (``guard_celery_flower``, called by ``worker.celery_app``). ``embeddings-flower``
(or ``python -m embeddings_flower``) runs the same Flower in process, under rules that do
not depend on where it starts (``embeddings_flower.guard``):

- it refuses to start without a login, ``FLOWER_BASIC_AUTH`` (``user:password``,
  comma-separated) or OAuth (``FLOWER_AUTH`` with ``FLOWER_AUTH_PROVIDER``), exit status 2;
- it listens on ``127.0.0.1`` unless ``FLOWER_ADDRESS`` or ``--address`` says otherwise;
- it reads this package's ``flowerconfig.py`` by absolute path, never the working
  directory's.
"""

from embeddings_flower.guard import (
    CONFIG_PATH,
    DEFAULT_ADDRESS,
    check_login,
    enforce,
    guard_celery_flower,
    install,
)

__all__ = [
    "CONFIG_PATH",
    "DEFAULT_ADDRESS",
    "check_login",
    "enforce",
    "guard_celery_flower",
    "install",
]
