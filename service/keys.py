"""Every Redis key the bridge uses, in one place.

Per-user keys carry a ``{...}`` hash tag so that all keys of one user live in one Redis Cluster
slot and a Lua script may touch them together.  Global keys share the ``{pb}`` tag for the same
reason: scripts that move entries between streams need them in one slot.
"""

from __future__ import annotations

PREFIX = "pb"

# -- streams and groups (foundation) ----------------------------------------------------------
PRESENCE_STREAM = f"{PREFIX}:{{pb}}:stream:presence"
LIFECYCLE_STREAM = f"{PREFIX}:{{pb}}:stream:lifecycle"
CALL_STREAM = f"{PREFIX}:{{pb}}:stream:calls"
DEAD_LETTER_STREAM = f"{PREFIX}:{{pb}}:stream:dead"
WORKER_GROUP = "workers"

# -- webhook ----------------------------------------------------------------------------------
# hash: reason -> count of notification items dropped for that reason
DROPPED_COUNTS = f"{PREFIX}:{{pb}}:dropped"
# hash: subscription id -> clientState secret (sealed at rest)
SUBSCRIPTION_SECRETS = f"{PREFIX}:{{pb}}:subscription:secrets"

# -- encryption certificates ------------------------------------------------------------------
# hash: certificate id -> sealed JSON {key_pem, cert_pem, created}
CERTIFICATES = f"{PREFIX}:{{pb}}:certificates"
# string: id of the certificate new subscriptions use
CURRENT_CERTIFICATE = f"{PREFIX}:{{pb}}:certificates:current"
CERTIFICATE_LOCK = f"{PREFIX}:{{pb}}:certificates:lock"


def observed_presence(user_id: str) -> str:
    """Hash: the newest Teams presence observed for one Entra user."""
    return f"{PREFIX}:{{u:{user_id}}}:observed"


# -- STARFACE gateway (directory, credentials, UCI sessions, callbacks) -------------------------
# (section owned by the STARFACE gateway; add its keys below this line)


# -- subscriptions (tokens, shards, lease, resync) ----------------------------------------------
# (section owned by the subscriptions package; add its keys below this line)


# -- reconciler ---------------------------------------------------------------------------------
