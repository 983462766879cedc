"""Every Redis key the bridge uses, in one place.

Per-user keys carry a ``{u:<id>}`` hash tag so that all keys of one user live in one Redis Cluster
slot and a Lua script may touch them together.  The work streams and the reconcile due-set are
partitioned (``service.core.partitions``): partition N carries the tag ``{pN}``, so the partitions
spread over a cluster's nodes.  The remaining global keys share the ``{pb}`` tag; no script and no
transaction mixes two tags.
"""

from __future__ import annotations

PREFIX = "pb"

# -- streams and groups (foundation) ----------------------------------------------------------


def presence_stream(partition: int) -> str:
    """Stream: decoded presence changes of the users in one partition."""
    return f"{PREFIX}:{{p{partition}}}:stream:presence"


def call_stream(partition: int) -> str:
    """Stream: STARFACE call events of the logins in one partition."""
    return f"{PREFIX}:{{p{partition}}}:stream:calls"


# Before partitions there was one stream of each kind; a worker still drains one it finds.
LEGACY_PRESENCE_STREAM = f"{PREFIX}:{{pb}}:stream:presence"
LEGACY_CALL_STREAM = f"{PREFIX}:{{pb}}:stream:calls"
LIFECYCLE_STREAM = f"{PREFIX}:{{pb}}:stream:lifecycle"
DEAD_LETTER_STREAM = f"{PREFIX}:{{pb}}:stream:dead"
WORKER_GROUP = "workers"

# zset: user id -> when to read the user's presence to confirm a change without sequenceNumber
PRESENCE_CONFIRM = f"{PREFIX}:{{pb}}:presence:confirm"

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
# hash: certificate id -> since when no subscription uses it (it is removed after a grace period)
CERTIFICATES_UNUSED_SINCE = f"{PREFIX}:{{pb}}:certificates:unused-since"


def observed_presence(user_id: str) -> str:
    """Hash: the newest Teams presence observed for one Entra user."""
    return f"{PREFIX}:{{u:{user_id}}}:observed"


# -- STARFACE gateway (directory, credentials, UCI sessions, callbacks) -------------------------
# (section owned by the STARFACE gateway; add its keys below this line)
# hash: login ID -> sealed password (SecretBox context: "<this key>/<login>")
STARFACE_CREDENTIALS = f"{PREFIX}:{{pb}}:starface:credentials"
# hash: login ID -> JSON of one selected STARFACE user
STARFACE_DIRECTORY = f"{PREFIX}:{{pb}}:starface:directory"
# hash: lower-cased e-mail -> login ID of the selected user with that e-mail
STARFACE_DIRECTORY_EMAILS = f"{PREFIX}:{{pb}}:starface:directory:emails"
# hash: refreshed_at, version, problems (JSON), last_error of the directory refresh
STARFACE_DIRECTORY_META = f"{PREFIX}:{{pb}}:starface:directory:meta"
# string with TTL: held by the replica that refreshes the directory this period
STARFACE_DIRECTORY_LOCK = f"{PREFIX}:{{pb}}:starface:directory:lock"
# zset: login ID -> epoch ms when its UCI session next needs work (login or keepAlive); a claim
# pushes the score ahead by a lease, so a dead replica's work comes due again by itself
UCI_DUE = f"{PREFIX}:{{pb}}:uci:due"
# hash: login ID -> JSON session status (state, since, error kind, last success)
UCI_SESSIONS = f"{PREFIX}:{{pb}}:uci:sessions"
# set: login IDs that left the selection and still need a UCI logout
UCI_LEAVING = f"{PREFIX}:{{pb}}:uci:leaving"
# hash: login ID -> sealed callback path token of its UCI session
UCI_CALLBACK_SECRETS = f"{PREFIX}:{{pb}}:uci:callback:secrets"
# hash: sha256 hex of a callback path token -> login ID (the callback endpoint's lookup)
UCI_CALLBACK_TOKENS = f"{PREFIX}:{{pb}}:uci:callback:tokens"
# hash: reason -> count of STARFACE callbacks refused for that reason
UCI_CALLBACK_REFUSED = f"{PREFIX}:{{pb}}:uci:callback:refused"


def uci_refused_logins(login: str) -> str:
    """Zset: when STARFACE refused this login's password in the last hour (member = score = time)."""
    return f"{PREFIX}:{{pb}}:uci:refused-logins:{login}"


# -- subscriptions (tokens, shards, lease, resync) ----------------------------------------------
# (section owned by the subscriptions package; add its keys below this line)
# string: holder token of the scheduler lease (SET NX PX; released by compare-and-delete)
SCHEDULER_LEASE = f"{PREFIX}:{{pb}}:subscriptions:lease"
# hash: service account UPN -> sealed MSAL SerializableTokenCache JSON
TOKEN_CACHES = f"{PREFIX}:{{pb}}:subscriptions:token-caches"
# hash: service account UPN -> sealed password (accounts that sign in by username/password)
ACCOUNT_PASSWORDS = f"{PREFIX}:{{pb}}:subscriptions:passwords"
# hash: service account UPN -> JSON {state, reason, since}: the operator-facing health of each account
ACCOUNT_STATUS = f"{PREFIX}:{{pb}}:subscriptions:account-status"
# hash: lower-cased e-mail -> JSON {id | null, checked_at}: Entra ids resolved by e-mail
USER_IDS = f"{PREFIX}:{{pb}}:subscriptions:user-ids"
# hash: service account UPN -> JSON sorted list of Entra user ids (the shard that account holds)
SHARDS = f"{PREFIX}:{{pb}}:subscriptions:shards"
# hash: service account UPN -> JSON subscription record (id, expiry, users digest, flags)
SUBSCRIPTION_STATE = f"{PREFIX}:{{pb}}:subscriptions:state"
# hash: field -> value: scheduler summary (last pass, last full resync, missing users, shortfall)
SCHEDULER_STATUS = f"{PREFIX}:{{pb}}:subscriptions:status"
LIFECYCLE_GROUP = "subscriptions"
# JSON sorted list of the Entra user ids poll mode reads (written by each scheduler pass)
POLL_USERS = f"{PREFIX}:{{pb}}:subscriptions:poll-users"
# hash: field -> value: the last poll round (at, users, requests, changes, interval it could hold)
POLL_STATUS = f"{PREFIX}:{{pb}}:subscriptions:poll-status"
# hash: Entra user id -> when the last change notification for the user arrived (web tier)
NOTIFIED_AT = f"{PREFIX}:{{pb}}:subscriptions:notified-at"
# hash: subscription id -> when the last change notification of that subscription arrived (web tier)
SUBSCRIPTION_DELIVERED_AT = f"{PREFIX}:{{pb}}:subscriptions:delivered-at"
# hash: Entra user id -> JSON {account, subscription_id, read_at}: a read found a state no
# notification had brought; a missed change unless a notification follows within the grace time
MISSED_SUSPECTS = f"{PREFIX}:{{pb}}:subscriptions:missed-suspects"
# hash: service account UPN -> count of changes its subscription did not deliver (ever)
MISSED_CHANGES = f"{PREFIX}:{{pb}}:subscriptions:missed-changes"
# hash: service account UPN -> JSON {subscription_id, detected_at, missed}: a subscription found
# silent; its users are polled until a notification of the account's subscription arrives
SILENT_SUBSCRIPTIONS = f"{PREFIX}:{{pb}}:subscriptions:silent"


def token_cache_lock(account: str) -> str:
    """String: short lock held while one process refreshes an account's delegated token."""
    return f"{PREFIX}:{{pb}}:subscriptions:token-lock:{account.lower()}"


# -- reconciler ---------------------------------------------------------------------------------


def reconcile_due(partition: int) -> str:
    """Zset: Entra user id -> when the user is due for a reconcile (the users of one partition)."""
    return f"{PREFIX}:{{p{partition}}}:reconcile:due"


def reconcile_inflight(partition: int) -> str:
    """Zset: Entra user id -> until when a reconciler holds the user (one writer per user)."""
    return f"{PREFIX}:{{p{partition}}}:reconcile:inflight"


# Before partitions there was one due-set and one in-flight set; a worker moves what it finds.
LEGACY_RECONCILE_DUE = f"{PREFIX}:{{pb}}:reconcile:due"
LEGACY_RECONCILE_INFLIGHT = f"{PREFIX}:{{pb}}:reconcile:inflight"
# hash: count (the partitions producers use now), max (the most ever used, which workers still read)
PARTITIONS = f"{PREFIX}:{{pb}}:partitions"
# hashes linking the two identities of a bridged user
IDENTITY_LOGIN_BY_USER = f"{PREFIX}:{{pb}}:identity:login-by-user"
# String: SHA-256 of the mapping the workers last started with; a different one re-reconciles everyone.
MAPPING_DIGEST = f"{PREFIX}:{{pb}}:reconcile:mapping-digest"
IDENTITY_USER_BY_LOGIN = f"{PREFIX}:{{pb}}:identity:user-by-login"
# hash: version number -> JSON {toml, who, at, note}: every mapping ever saved (console, MAPPING_FILE)
MAPPING_VERSIONS = f"{PREFIX}:{{pb}}:mapping:versions"
# string: the version number workers apply; they poll it and switch without a restart
MAPPING_CURRENT = f"{PREFIX}:{{pb}}:mapping:current"
# string: SHA-256 of the MAPPING_FILE text last stored as a version (a changed file is a new version)
MAPPING_FILE_DIGEST = f"{PREFIX}:{{pb}}:mapping:file-digest"
CALL_GROUP = "reconcilers"


def user_calls(user_id: str) -> str:
    """Hash: call id -> STARFACE state, for the user's calls that have not hung up."""
    return f"{PREFIX}:{{u:{user_id}}}:calls"


def user_ended_calls(user_id: str) -> str:
    """Set of call ids that hung up: a late event of an ended call must not revive it."""
    return f"{PREFIX}:{{u:{user_id}}}:calls:ended"


def user_bridge(user_id: str) -> str:
    """Hash: what the bridge applied and remembers for the user (session, DND, text, own state)."""
    return f"{PREFIX}:{{u:{user_id}}}:bridge"


def user_rewrites(user_id: str) -> str:
    """Zset: when the bridge restored an overwritten STARFACE DND or text (member = score = time),
    the last hour of them: what STARFACE_REWRITES_PER_HOUR counts."""
    return f"{PREFIX}:{{u:{user_id}}}:starface:rewrites"


def user_decisions(user_id: str) -> str:
    """List: the user's last decisions, newest first, as JSON."""
    return f"{PREFIX}:{{u:{user_id}}}:decisions"


# -- admin console --------------------------------------------------------------------------------
# stream: who changed what in the console (before -> after), capped
CONSOLE_AUDIT = f"{PREFIX}:{{pb}}:console:audit"


def console_session(session_id_digest: str) -> str:
    """Hash with TTL: one signed-in console session (who, how, CSRF token); the TTL is the idle timeout."""
    return f"{PREFIX}:{{pb}}:console:session:{session_id_digest}"


def console_sign_in(state: str) -> str:
    """String with TTL: a sealed MSAL auth code flow (PKCE verifier, nonce) between redirect and callback."""
    return f"{PREFIX}:{{pb}}:console:sign-in:{state}"


def console_device_flow(account: str) -> str:
    """String with TTL: JSON of a device code sign-in started from the console (code, link, outcome)."""
    return f"{PREFIX}:{{pb}}:console:device-flow:{account.lower()}"


# zset: worker process name -> last heartbeat; the last live worker to stop logs UCI sessions out
LIVE_WORKERS = f"{PREFIX}:{{pb}}:workers:live"

# Every hash whose values are sealed with the secret box, each value under the context
# "<hash>/<field>": what `rotate secret-key` walks to re-seal everything under a new key.
SEALED_HASHES = (
    SUBSCRIPTION_SECRETS,
    CERTIFICATES,
    STARFACE_CREDENTIALS,
    UCI_CALLBACK_SECRETS,
    TOKEN_CACHES,
    ACCOUNT_PASSWORDS,
)
